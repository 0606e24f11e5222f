//! `concordat token issue` (a development JWT) and `token create|list|revoke`: personal
//! access tokens, managed offline against a gateway's configuration (its data directory, or its shared
//! store, holds the register; a running server sees changes at once).

use anyhow::{anyhow, bail};
use concordat_core::{PartnerId, Purpose, Role};
use concordat_policy::Policies;
use concordat_server::Config;
use concordat_server::auth::DevSigner;
use concordat_store::tokens::{NewToken, TokenInfo, Tokens};

use crate::TokenCommand;

fn open(config: &std::path::Path) -> anyhow::Result<(Config, Policies, Tokens)> {
    let cfg = Config::load(config).map_err(|e| anyhow!("{e}"))?;
    let policies = Policies::load(&cfg.policies_dir).map_err(|e| anyhow!("{e}"))?;
    let tokens = Tokens::at(&cfg.location().map_err(|e| anyhow!("{e}"))?);
    Ok((cfg, policies, tokens))
}

/// The partner (which must be in partners.toml) and roles a credential is for.
fn grantee(
    cfg: &Config,
    policies: &Policies,
    partner: &str,
    roles: &[String],
) -> anyhow::Result<(PartnerId, Vec<Role>)> {
    let Some(p) = policies.partners().get(partner) else {
        bail!(
            "unknown partner `{partner}` (see {}/partners.toml)",
            cfg.policies_dir.display()
        );
    };
    let roles = roles
        .iter()
        .map(|r| r.parse::<Role>())
        .collect::<Result<_, _>>()?;
    Ok((p.id.clone(), roles))
}

fn line(t: &TokenInfo) -> String {
    let roles: Vec<&str> = t.roles.iter().map(|r| r.as_str()).collect();
    let purposes: Vec<&str> = t.purposes.iter().map(Purpose::as_str).collect();
    format!(
        "{}  {:<14} {:<24} roles={} purposes={} expires={} {}{}",
        t.id,
        t.partner,
        t.name,
        roles.join(","),
        if purposes.is_empty() {
            "any".to_owned()
        } else {
            purposes.join(",")
        },
        t.expires.format("%Y-%m-%d"),
        t.revoked
            .map(|r| format!("REVOKED {}", r.format("%Y-%m-%d")))
            .unwrap_or_default(),
        if t.created_by.is_empty() {
            String::new()
        } else {
            format!(" (by {})", t.created_by)
        }
    )
}

/// Runs a token command.
pub fn run(command: TokenCommand) -> anyhow::Result<()> {
    match command {
        TokenCommand::Issue {
            config,
            partner,
            roles,
            ttl,
            subject,
        } => {
            let (cfg, policies, _) = open(&config)?;
            let (partner, roles) = grantee(&cfg, &policies, &partner, &roles)?;
            let signer = DevSigner::from_config(&cfg.auth).map_err(|e| anyhow!(e))?;
            let subject = subject.unwrap_or_else(|| format!("dev@{partner}"));
            let token = signer
                .issue(&subject, partner.as_str(), &roles, ttl)
                .map_err(|e| anyhow!(e))?;
            println!("{token}");
            Ok(())
        }
        TokenCommand::Create {
            config,
            partner,
            roles,
            purposes,
            days,
            name,
        } => {
            let (cfg, policies, tokens) = open(&config)?;
            let (partner, roles) = grantee(&cfg, &policies, &partner, &roles)?;
            let purposes: Vec<Purpose> = purposes
                .iter()
                .map(|p| Purpose::known(p))
                .collect::<Result<_, _>>()?;
            let (text, info) = tokens
                .create(NewToken {
                    name,
                    partner,
                    created_by: "cli".into(),
                    roles,
                    purposes,
                    days,
                })
                .map_err(|e| anyhow!("{e}"))?;
            eprintln!("{}", line(&info));
            println!("{text}");
            Ok(())
        }
        TokenCommand::List { config, partner } => {
            let (_, policies, tokens) = open(&config)?;
            let partner = match partner {
                Some(id) => Some(
                    policies
                        .partners()
                        .get(&id)
                        .ok_or_else(|| anyhow!("unknown partner `{id}`"))?
                        .id
                        .clone(),
                ),
                None => None,
            };
            for t in tokens.list(partner.as_ref()).map_err(|e| anyhow!("{e}"))? {
                println!("{}", line(&t));
            }
            Ok(())
        }
        TokenCommand::Revoke { config, id } => {
            let (_, _, tokens) = open(&config)?;
            let t = tokens.revoke(&id, None).map_err(|e| anyhow!("{e}"))?;
            println!("{}", line(&t));
            Ok(())
        }
    }
}
