"""Django and DRF authentication for requests that come through authgate.

authgate verifies the client's credential at the edge and forwards the request with a short-lived
signed assertion of who the caller is (a compact JWS in ``X-Auth-Assertion``). This package
verifies that assertion against the gateway's public keys and maps it to a Django user, so the
application trusts a signature instead of a header anyone on the network could set.
"""

__version__ = "0.1.0"
