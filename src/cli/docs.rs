//! `lbmesh completions SHELL` and `lbmesh man-pages --dir DIR`: shell
//! completions and man pages generated from the command-line definitions,
//! so what a package ships always matches the binary it ships.

use std::io::Write;
use std::path::{Path, PathBuf};

use anyhow::Context;
use clap::{Args, CommandFactory};
use clap_complete::Shell;
use clap_mangen::roff::{Roff, bold, italic, roman};

use super::Cli;

#[derive(Debug, Args)]
pub struct CompletionsArgs {
    /// The shell to complete for.
    #[arg(value_enum)]
    pub shell: Shell,
}

#[derive(Debug, Args)]
pub struct ManPagesArgs {
    /// Where lbmesh.1 and one page per command (lbmesh-serve.1, …) are written.
    #[arg(long)]
    pub dir: PathBuf,
}

/// Prints the completion script for `args.shell` on stdout.
pub fn completions(args: CompletionsArgs) -> anyhow::Result<()> {
    let mut out = Vec::new();
    clap_complete::generate(args.shell, &mut Cli::command(), "lbmesh", &mut out);
    std::io::stdout()
        .lock()
        .write_all(&out)
        .context("write the completion script")
}

/// Writes lbmesh.1 and a page per visible command and subcommand.
pub fn man_pages(args: ManPagesArgs) -> anyhow::Result<()> {
    std::fs::create_dir_all(&args.dir).with_context(|| format!("create {}", args.dir.display()))?;
    let pages = render_man_pages();
    for (name, text) in &pages {
        write_file(&args.dir.join(name), text)?;
    }
    Ok(())
}

/// Every man page: (file name, roff text). The top page adds FILES and SEE
/// ALSO to what clap knows.
pub fn render_man_pages() -> Vec<(String, Vec<u8>)> {
    let mut cmd = Cli::command().disable_help_subcommand(true);
    cmd.build();
    let mut pages = Vec::new();
    for sub in cmd.get_subcommands().filter(|s| !s.is_hide_set()) {
        collect(sub.clone(), &mut pages);
    }
    let man = clap_mangen::Man::new(cmd);
    let mut top = Vec::new();
    // Writing into a Vec cannot fail.
    let _ = render_top(&man, &mut top);
    pages.insert(0, (man.get_filename(), top));
    pages
}

fn collect(cmd: clap::Command, pages: &mut Vec<(String, Vec<u8>)>) {
    for sub in cmd.get_subcommands().filter(|s| !s.is_hide_set()) {
        collect(sub.clone(), pages);
    }
    let man = clap_mangen::Man::new(cmd);
    let mut text = Vec::new();
    let _ = man.render(&mut text);
    pages.push((man.get_filename(), text));
}

fn render_top(man: &clap_mangen::Man, w: &mut dyn Write) -> std::io::Result<()> {
    man.render_title(w)?;
    man.render_name_section(w)?;
    man.render_synopsis_section(w)?;
    man.render_description_section(w)?;
    man.render_options_section(w)?;
    man.render_subcommands_section(w)?;
    let mut roff = Roff::new();
    roff.control("SH", ["FILES"]);
    for (path, what) in [
        (
            "/etc/lbmesh/lbmesh.toml",
            "the daemon's settings, as the package installs them (lbmesh serve --config)",
        ),
        (
            "/var/lib/lbmesh",
            "the data directory: registry, generated token, HAProxy's config, keepalived's track file",
        ),
        ("/run/lbmesh", "keepalived's notify FIFO, when configured"),
    ] {
        roff.control("TP", []);
        roff.text([italic(path)]);
        roff.text([roman(what)]);
    }
    roff.control("SH", ["SEE ALSO"]);
    roff.text([
        bold("haproxy"),
        roman("(1), "),
        bold("keepalived"),
        roman("(8), "),
        bold("keepalived.conf"),
        roman("(5); the README in "),
        italic("/usr/share/doc/lbmesh"),
        roman(" (installing a mesh, the configuration reference)."),
    ]);
    roff.to_writer(w)?;
    man.render_version_section(w)
}

/// Written beside the target and renamed over it, so a reader never sees
/// half a page.
fn write_file(path: &Path, text: &[u8]) -> anyhow::Result<()> {
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, text).with_context(|| format!("write {}", tmp.display()))?;
    std::fs::rename(&tmp, path).with_context(|| format!("write {}", path.display()))
}
