//! `conclave identity`: create and show identity files.

use std::path::PathBuf;

use anyhow::Context;
use conclave_crypto::Identity;

use crate::printer::Printer;

#[derive(clap::Subcommand)]
pub enum Command {
    /// Create a new identity file (Ed25519 + X25519 keys, mode 0600) and print its did:key.
    New {
        /// Where to write the identity.
        #[arg(long, default_value = "conclave.identity")]
        out: PathBuf,
    },
    /// Print the did:key and sealing key of an identity file.
    Show {
        #[arg(long, default_value = "conclave.identity")]
        identity: PathBuf,
    },
}

pub fn run(command: Command, printer: &Printer) -> anyhow::Result<()> {
    match command {
        Command::New { out } => {
            let identity = Identity::generate();
            identity.save(&out)?;
            printer.status(format!(
                "wrote {} (keep it secret; mode 0600)",
                out.display()
            ));
            printer.data(identity.participant_id().to_string());
        }
        Command::Show { identity } => {
            let id = Identity::load(&identity)
                .with_context(|| format!("loading {}", identity.display()))?;
            let public = id.public();
            printer.data(format!("did:          {}", public.id));
            printer.data(format!("sealing key:  {}", hex::encode(public.sealing_key)));
        }
    }
    Ok(())
}
