//! Command line: `upstream-mock [serve flags]` runs the server, `upstream-mock mint ...`
//! prints one token for scripts.

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand};
use jsonwebtoken::Algorithm;

use crate::users::{User, Users};

/// The HS256 secret shared with the demo configuration. Not a secret at all: it only
/// exists so that `authgate` and the mock agree out of the box.
pub const DEFAULT_JWT_SECRET: &str = "authgate-demo-secret-change-me";

#[derive(Debug, Parser)]
#[command(
    name = "upstream-mock",
    version,
    about = "A small but real HTTP backend standing in for the Django/DRF LMS API behind authgate",
    args_conflicts_with_subcommands = true
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Option<Command>,
    #[command(flatten)]
    pub serve: ServeArgs,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Print a djangorestframework-simplejwt-shaped access token to stdout.
    Mint(MintArgs),
    /// Print a DPoP proof (RFC 9449) for one request, signed by one of the test keys.
    DpopProof(ProofArgs),
}

#[derive(Debug, Clone, Args)]
pub struct ProofArgs {
    /// The key that signs it (its public JWK goes in the header): ec-1, ed-1, rsa-1, ...
    #[arg(long, default_value = "ec-1")]
    pub kid: String,

    /// ES256 for ec-1, EdDSA for ed-1, RS256 or PS256 for the RSA keys.
    #[arg(long, default_value = "ES256", value_parser = parse_alg)]
    pub alg: Algorithm,

    /// The request's method (`htm`).
    #[arg(long, default_value = "GET")]
    pub method: String,

    /// The request's URL (`htu`), e.g. http://127.0.0.1:8080/api/courses/.
    #[arg(long)]
    pub url: String,

    /// The access token the proof accompanies (`ath`).
    #[arg(long)]
    pub token: Option<String>,

    /// A server nonce (`DPoP-Nonce`) to include.
    #[arg(long)]
    pub nonce: Option<String>,

    /// Same as the server's --keys-dir.
    #[arg(long, value_name = "DIR")]
    pub keys_dir: Option<PathBuf>,
}

#[derive(Debug, Clone, Args)]
pub struct ServeArgs {
    /// Address to listen on; port 0 picks a free port (the real one is printed).
    #[arg(long, default_value = "127.0.0.1:8000")]
    pub listen: String,

    /// Secret of the HS256 simplejwt tokens (raw bytes of the string).
    #[arg(long, env = "MOCK_JWT_SECRET", default_value = DEFAULT_JWT_SECRET, hide_env_values = true)]
    pub jwt_secret: String,

    /// Lifetime of access JWTs and of knox tokens, in seconds.
    #[arg(long, value_name = "SECONDS", default_value_t = 900)]
    pub access_ttl: u64,

    /// Lifetime of refresh JWTs, in seconds.
    #[arg(long, value_name = "SECONDS", default_value_t = 86_400)]
    pub refresh_ttl: u64,

    /// Accounts as `user:pass[:id],...`; an omitted id is the 1-based position in the list.
    #[arg(long, default_value = "alice:alice-pass:42,bob:bob-pass:7", value_parser = parse_users)]
    pub users: Users,

    /// HTTP Basic credentials `ID:SECRET` required on the introspection endpoint.
    #[arg(long, value_name = "ID:SECRET", default_value = "authgate:introspection-secret", value_parser = parse_client)]
    pub introspection_client: ClientCredentials,

    /// Echoed in the `X-Mock-Name` header of every response and in /echo bodies.
    #[arg(long, default_value = "mock")]
    pub name: String,

    /// Folder with `<kid>.key.pem` and `<kid>.jwk.json` files replacing the compiled-in test keys.
    #[arg(long, value_name = "DIR")]
    pub keys_dir: Option<PathBuf>,

    /// An opaque token the knox store holds from the start, `TOKEN:SUB` (an hour's lifetime,
    /// the login scope); repeatable. An identity provider restarted with its database, in tests.
    #[arg(long, value_name = "TOKEN:SUB")]
    pub opaque_token: Vec<String>,
}

#[derive(Debug, Clone, Args)]
pub struct MintArgs {
    /// Signing algorithm: HS256/384/512, RS256/384/512, PS256/384/512, ES256, ES384, EdDSA.
    #[arg(long, default_value = "HS256", value_parser = parse_alg)]
    pub alg: Algorithm,

    /// The subject, written to the `user_id` claim (a JSON number when it is one).
    #[arg(long)]
    pub sub: String,

    /// Seconds until `exp`; negative values mint an already expired token.
    #[arg(
        long,
        value_name = "SECONDS",
        default_value_t = 900,
        allow_negative_numbers = true
    )]
    pub ttl: i64,

    /// HMAC secret for the HS* algorithms.
    #[arg(long, env = "MOCK_JWT_SECRET", default_value = DEFAULT_JWT_SECRET, hide_env_values = true)]
    pub jwt_secret: String,

    /// Key id for the header; for asymmetric algorithms it selects the key
    /// (default: the first key of the algorithm's family, e.g. rsa-1).
    #[arg(long)]
    pub kid: Option<String>,

    /// Adds a `scope` claim (space-separated scopes).
    #[arg(long)]
    pub scope: Option<String>,

    /// Adds an `iss` claim.
    #[arg(long)]
    pub iss: Option<String>,

    /// Same as the server's --keys-dir.
    #[arg(long, value_name = "DIR")]
    pub keys_dir: Option<PathBuf>,
}

/// Client credentials for HTTP Basic authentication.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClientCredentials {
    pub id: String,
    pub secret: String,
}

fn parse_client(s: &str) -> Result<ClientCredentials, String> {
    match s.split_once(':') {
        Some((id, secret)) if !id.is_empty() => Ok(ClientCredentials {
            id: id.to_owned(),
            secret: secret.to_owned(),
        }),
        _ => Err("expected ID:SECRET".to_owned()),
    }
}

fn parse_alg(s: &str) -> Result<Algorithm, String> {
    s.parse::<Algorithm>()
        .map_err(|_| format!("unknown algorithm {s:?}"))
}

/// Parses `user:pass[:id],...`. The password may itself contain `:`; only a trailing
/// all-digit field is taken as the id.
pub fn parse_users(s: &str) -> Result<Users, String> {
    let mut users = Vec::new();
    for (position, entry) in s
        .split(',')
        .map(str::trim)
        .filter(|e| !e.is_empty())
        .enumerate()
    {
        let (username, rest) = entry
            .split_once(':')
            .ok_or_else(|| format!("user {entry:?}: expected user:pass[:id]"))?;
        let (password, id) = match rest.rsplit_once(':') {
            Some((pass, id)) if !id.is_empty() && id.bytes().all(|b| b.is_ascii_digit()) => {
                let id = id
                    .parse::<u64>()
                    .map_err(|e| format!("user {username:?}: id: {e}"))?;
                (pass, id)
            }
            _ => (rest, position as u64 + 1),
        };
        if username.is_empty() {
            return Err(format!("user {entry:?}: empty username"));
        }
        users.push(User {
            username: username.to_owned(),
            password: password.to_owned(),
            id,
        });
    }
    Users::new(users)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_users_with_and_without_ids() {
        let users = parse_users("alice:alice-pass:42, bob:b:o:b ,carol:pw").expect("valid");
        let got: Vec<_> = users
            .iter()
            .map(|u| (u.username.as_str(), u.password.as_str(), u.id))
            .collect();
        assert_eq!(
            got,
            [
                ("alice", "alice-pass", 42),
                ("bob", "b:o:b", 2),
                ("carol", "pw", 3)
            ]
        );
        assert!(parse_users("nopassword").is_err());
        assert!(parse_users("a:x:1,a:y:2").is_err(), "duplicate username");
        assert!(parse_users("a:x:1,b:y:1").is_err(), "duplicate id");
    }

    #[test]
    fn defaults_parse() {
        let cli = Cli::try_parse_from(["upstream-mock"]).expect("defaults");
        assert!(cli.command.is_none());
        assert_eq!(cli.serve.listen, "127.0.0.1:8000");
        assert_eq!(cli.serve.access_ttl, 900);
        assert_eq!(cli.serve.refresh_ttl, 86_400);
        assert_eq!(cli.serve.users.iter().count(), 2);
        assert_eq!(cli.serve.introspection_client.id, "authgate");
        assert_eq!(
            cli.serve.introspection_client.secret,
            "introspection-secret"
        );

        let cli = Cli::try_parse_from([
            "upstream-mock",
            "mint",
            "--alg",
            "ES256",
            "--sub",
            "42",
            "--ttl",
            "-5",
        ])
        .expect("mint");
        match cli.command {
            Some(Command::Mint(m)) => {
                assert_eq!(m.alg, Algorithm::ES256);
                assert_eq!(m.ttl, -5);
            }
            _ => panic!("expected mint"),
        }
        let cli = Cli::try_parse_from([
            "upstream-mock",
            "dpop-proof",
            "--kid",
            "ed-1",
            "--alg",
            "EdDSA",
            "--url",
            "http://gw/x",
        ])
        .expect("dpop-proof");
        match cli.command {
            Some(Command::DpopProof(p)) => {
                assert_eq!((p.kid.as_str(), p.alg), ("ed-1", Algorithm::EdDSA));
                assert_eq!(p.method, "GET");
            }
            _ => panic!("expected dpop-proof"),
        }
        assert!(
            Cli::try_parse_from(["upstream-mock", "mint", "--alg", "none", "--sub", "1"]).is_err()
        );
    }
}
