//! `thinarc serve`: a point as a read-only NBD export, until SIGINT or SIGTERM.

use std::io::Write as _;
use std::path::PathBuf;
use std::sync::Arc;

use anyhow::Context as _;
use clap::Args;

use super::{Ctx, signals::interrupted};
use thinarc::nightly::Need;
use thinarc::repo::{PointSelector, VolumeName};
use thinarc::serve::{Address, Export, Listener, ServeOptions, serve};
use thinarc::size::{human, parse_size};

/// Arguments of `serve`.
#[derive(Debug, Args)]
#[command(group = clap::ArgGroup::new("address").required(true).args(["socket", "listen"]))]
pub struct ServeArgs {
    /// Volume to serve.
    pub volume: VolumeName,
    /// Point to serve: an archive id (or unique prefix), a sequence number, or `latest`.
    #[arg(long, default_value = "latest", value_parser = PointSelector::parse)]
    pub at: PointSelector,
    /// Listen on this Unix socket (created; removed when serving ends).
    #[arg(long, value_name = "PATH")]
    pub socket: Option<PathBuf>,
    /// Listen on TCP: `PORT` (on 127.0.0.1) or `HOST:PORT`. NBD has no
    /// authentication and no encryption: anyone who can reach the port reads the
    /// volume.
    #[arg(long, value_name = "[HOST:]PORT", value_parser = tcp_address)]
    pub listen: Option<String>,
    /// Accept writes, trims and zeroes into this copy-on-write overlay file (created
    /// sparse; its map of written ranges is kept beside it as FILE.map, so a later
    /// serve of the same point with the same FILE goes on from there). The repository
    /// is never written.
    #[arg(long, value_name = "FILE")]
    pub overlay: Option<PathBuf>,
    /// Decoded data kept in memory for repeated reads.
    #[arg(long, value_name = "SIZE", value_parser = parse_size, default_value = "256MiB")]
    pub cache: u64,
}

/// clap's parser of `--listen`: the TCP address, `HOST:PORT`, a bare port listening
/// on loopback. A host name is resolved when binding.
fn tcp_address(listen: &str) -> Result<String, String> {
    let port = |p: &str| p.parse::<u16>().is_ok();
    match listen.rsplit_once(':') {
        None if port(listen) => Ok(format!("127.0.0.1:{listen}")),
        Some((host, p)) if !host.is_empty() && port(p) => Ok(listen.to_owned()),
        _ => Err(format!(
            "{listen:?} is not PORT or HOST:PORT (a port from 0 to 65535)"
        )),
    }
}

/// Serves until interrupted; an interruption is a clean end (exit 0).
pub async fn run(args: ServeArgs, ctx: &Ctx) -> anyhow::Result<()> {
    let repo = ctx.open_unlocked(Need::Read, "serve").await?;
    let opts = ServeOptions {
        at: args.at.clone(),
        cache: args.cache,
        overlay: args.overlay.clone(),
    };
    let address = match (&args.socket, &args.listen) {
        (Some(path), _) => Address::Unix(path.clone()),
        (None, Some(listen)) => Address::Tcp(listen.clone()),
        (None, None) => unreachable!("clap requires --socket or --listen"),
    };
    // Bound first: a bad socket path fails before the overlay is created, and a
    // bad point drops the listener, which removes its socket file.
    let listener = Listener::bind(&address)
        .await
        .with_context(|| format!("cannot serve {}", args.volume))?;
    let export = Export::open(&repo, &args.volume, &opts)
        .await
        .with_context(|| format!("cannot serve {}", args.volume))?;
    if !ctx.quiet {
        println!(
            "serving {} seq {} archive {} ({}, {}) at {}",
            export.name,
            export.seq,
            export.archive,
            human(export.size()),
            match &args.overlay {
                Some(o) => format!("writes go to the overlay {}", o.display()),
                None => "read-only".to_owned(),
            },
            listener.uri
        );
    } else {
        println!("{}", listener.uri);
    }
    std::io::stdout().flush()?;
    let stop = async {
        let signal = interrupted().await;
        tracing::info!("{signal}: serving ends");
    };
    serve(Arc::new(export), listener, stop).await?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_bare_port_listens_on_loopback() {
        assert_eq!(tcp_address("10809").unwrap(), "127.0.0.1:10809");
        assert_eq!(tcp_address("0.0.0.0:10809").unwrap(), "0.0.0.0:10809");
        assert_eq!(tcp_address("[::1]:10809").unwrap(), "[::1]:10809");
        for bad in ["foo", "99999", "host:", ":10809", "host:x"] {
            assert!(tcp_address(bad).is_err(), "{bad}");
        }
    }
}
