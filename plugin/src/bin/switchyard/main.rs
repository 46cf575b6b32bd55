//! The `switchyard` command line tool: builds, inspects, evaluates and benchmarks bundles.

mod bench;
mod build_bundle;
mod dev;
mod eval;
mod extract;
mod inspect;
mod low_precision;
mod moe_merge;
mod moefy;
mod progress;
mod prune;
mod route;
mod sim;
mod trace;

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(name = "switchyard", version, about = "One base model plus compressed fine-tuned experts in one GGUF bundle")]
struct Cli {
    /// Worker threads (default: all cores).
    #[arg(long, short = 't', global = true, env = "SWITCHYARD_THREADS")]
    threads: Option<usize>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Build a bundle: the base GGUF plus each expert's compressed delta.
    Pack(build_bundle::PackArgs),
    /// Show a bundle's experts, per-tensor bits, salient fraction, sizes and base fingerprint
    /// (or a plain GGUF's metadata and tensors).
    Inspect(inspect::InspectArgs),
    /// Write one expert (or "base") as a standalone GGUF that stock llama.cpp loads.
    Extract(extract::ExtractArgs),
    /// Per-tensor and total reconstruction error of an expert: codec vs RTN and BitDelta.
    Eval(eval::EvalArgs),
    /// Fit a bundle's router (which expert serves a prompt).
    #[command(subcommand)]
    Router(route::RouterCommand),
    /// Route prompts with a bundle's router: the expert and confidence per prompt.
    Route(route::RouteArgs),
    /// Record a MoE model's routing on real text (runs the patched llama.cpp).
    Trace(trace::TraceArgs),
    /// Refactor a dense model into a mixture of experts by activation statistics on
    /// calibration text (runs the patched llama.cpp to capture FFN inputs).
    Moefy(moefy::MoefyArgs),
    /// Merge fine-tunes of one dense model into a mixture of experts: their FFNs as each
    /// layer's experts, routers fitted on each one's domain text (Branch-Train-MiX).
    MoeMerge(moe_merge::MoeMergeArgs),
    /// Add low-precision copies of a MoE model's experts and per-layer skipping thresholds,
    /// for the patched llama.cpp's --moe-cache (--moe-t1, --moe-skip-beta).
    MoePack(low_precision::MoePackArgs),
    /// Drop experts of a MoE model: per layer keep the N best on calibration text (enum, reap,
    /// freq or random).
    MoePrune(prune::MoePruneArgs),
    /// Replay a MoE routing trace against each expert cache policy and Belady's optimum.
    Sim(sim::SimArgs),
    /// Benchmarks.
    #[command(subcommand)]
    Bench(bench::BenchCommand),
    /// Write a GGUF model as a Hugging Face folder (dequantized; q/k rows in HF order).
    ToHf(dev::ToHfArgs),
    /// Write a Hugging Face folder as a GGUF model, tokenizer copied from another GGUF.
    FromHf(dev::FromHfArgs),
    /// Synthetic models and experts for tests and demos.
    #[command(subcommand)]
    Synth(dev::SynthCommand),
}

fn main() -> ExitCode {
    // Behave like other command line tools when piped into `head`: end quietly on SIGPIPE
    // instead of panicking on the failed write.
    #[cfg(unix)]
    // SAFETY: restoring the default disposition of a signal before any thread starts.
    unsafe {
        libc::signal(libc::SIGPIPE, libc::SIG_DFL);
    }
    let cli = Cli::parse();
    if let Some(n) = cli.threads {
        if let Err(e) = rayon::ThreadPoolBuilder::new().num_threads(n).build_global() {
            eprintln!("switchyard: error: cannot start {n} threads: {e}");
            return ExitCode::FAILURE;
        }
    }
    let result = match cli.command {
        Command::Pack(a) => build_bundle::pack(a),
        Command::Inspect(a) => inspect::inspect(a),
        Command::Extract(a) => extract::extract(a),
        Command::Eval(a) => eval::eval(a),
        Command::Router(c) => route::train(c),
        Command::Route(a) => route::route(a),
        Command::Trace(a) => trace::trace(a, cli.threads),
        Command::Moefy(a) => moefy::moefy(a, cli.threads),
        Command::MoeMerge(a) => moe_merge::moe_merge(a, cli.threads),
        Command::MoePack(a) => low_precision::moe_pack(a),
        Command::MoePrune(a) => prune::moe_prune(a, cli.threads),
        Command::Sim(a) => sim::sim(a),
        Command::Bench(c) => bench::run(c),
        Command::ToHf(a) => dev::to_hf(a),
        Command::FromHf(a) => dev::from_hf(a),
        Command::Synth(c) => dev::synth(c),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("switchyard: error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

/// `NAME=DIR` as given to `--expert`.
fn parse_named_path(s: &str) -> Result<(String, PathBuf), String> {
    let (name, dir) = s.split_once('=').ok_or_else(|| format!("'{s}' is not NAME=DIR or NAME=FILE.gguf"))?;
    switchyard::bundle::naming::check_expert_name(name).map_err(|e| e.to_string())?;
    Ok((name.to_string(), PathBuf::from(dir)))
}

fn mib(bytes: u64) -> String {
    format!("{:.2} MiB", bytes as f64 / (1024.0 * 1024.0))
}
