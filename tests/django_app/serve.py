#!/usr/bin/env python3
"""Serves the LMS-style Django API that the gateway's e2e tests put behind authgate.

    JWT_SECRET=... AUTHGATE_JWKS_URL=http://127.0.0.1:9090/.well-known/jwks.json \\
    AUTHGATE_ISSUER=https://authgate.example.com AUTHGATE_AUDIENCE=lms \\
        python3 tests/django_app/serve.py --listen 127.0.0.1:8000 --db /tmp/lms.sqlite3

Migrates the sqlite file (quietly), seeds alice/alice-pass and bob/bob-pass if absent, then
serves with Django's runserver (threaded, no reloader). Once the socket is bound it prints
"ready <host>:<port>" on stdout (the real port if --listen used port 0); everything else, the
access log included, goes to stderr.
"""

import argparse
import os
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(os.path.dirname(HERE))
# authgate_django from this checkout, ahead of any installed (possibly stale) copy.
sys.path.insert(0, os.path.join(REPO, "integrations", "django"))
sys.path.insert(1, HERE)

REQUIRED_ENV = ("JWT_SECRET", "AUTHGATE_JWKS_URL", "AUTHGATE_ISSUER", "AUTHGATE_AUDIENCE")
SEED_USERS = (("alice", "alice-pass"), ("bob", "bob-pass"))


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description="LMS-style Django API behind authgate")
    parser.add_argument("--listen", default="127.0.0.1:8000", help="host:port (port 0: any free port)")
    parser.add_argument("--db", required=True, help="sqlite file, created and migrated if needed")
    args = parser.parse_args()
    host, sep, port = args.listen.rpartition(":")
    if not sep or not host or not port.isdigit():
        parser.error("--listen must be host:port")
    args.host, args.port = host.strip("[]"), port
    return args


def main() -> int:
    args = parse_args()
    missing = [name for name in REQUIRED_ENV if not os.environ.get(name)]
    if missing:
        print(f"serve.py: missing environment variable(s): {', '.join(missing)}", file=sys.stderr)
        return 2

    os.environ["LMS_API_DB"] = os.path.abspath(args.db)
    os.environ["DJANGO_SETTINGS_MODULE"] = "lms_api.settings"
    # runserver's banner and warning go to stderr anyway; the warning is noise for a test fixture.
    os.environ.setdefault("DJANGO_RUNSERVER_HIDE_WARNING", "true")

    import django
    from django.core.management import call_command
    from django.core.management.commands.runserver import Command as RunserverCommand

    django.setup()
    # Settings are checked here (authgate_django's check included), so runserver can skip them.
    call_command("check", stdout=sys.stderr, stderr=sys.stderr)
    call_command("migrate", interactive=False, verbosity=0, stdout=sys.stderr)
    seed_users()

    class Runserver(RunserverCommand):
        def on_bind(self, server_port):
            super().on_bind(server_port)
            # Printed only once the socket listens, so a caller can connect right away.
            print(f"ready {args.host}:{server_port}", file=sys.__stdout__, flush=True)

    ipv6 = ":" in args.host
    addr = f"[{args.host}]:{args.port}" if ipv6 else f"{args.host}:{args.port}"
    call_command(
        Runserver(stdout=sys.stderr, stderr=sys.stderr),
        addr,
        use_reloader=False,
        use_threading=True,
        use_ipv6=ipv6,
        skip_checks=True,
    )
    return 0


def seed_users() -> None:
    from django.contrib.auth import get_user_model

    User = get_user_model()
    for username, password in SEED_USERS:
        if not User.objects.filter(username=username).exists():
            User.objects.create_user(username, f"{username}@example.com", password)


if __name__ == "__main__":
    sys.exit(main())
