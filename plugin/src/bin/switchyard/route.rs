//! `switchyard router train` and `switchyard route`: fit a bundle's router on labelled prompts,
//! and route prompts with it. Prompts are tokenized by llama.cpp itself (`llama-tokenize` of the
//! patched build), so the tokens are exactly those the plugin routes on inside llama.cpp.

use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Instant;

use anyhow::{bail, Context, Result};
use clap::{Args, Subcommand};
use rand::seq::SliceRandom;
use rand::SeedableRng;
use switchyard::bundle::Bundle;
use switchyard::router::metrics::Evaluation;
use switchyard::router::train::{fit, TrainOptions};
use switchyard::router::{escape_prompt_line, PromptRouter, TokenEmbedding};
use switchyard::switch::BASE;

/// Where the patched llama.cpp's tools are (`scripts/build-llama.sh` prints it).
#[derive(Args)]
pub struct LlamaBin {
    #[arg(long, env = "SWITCHYARD_LLAMA_PATCHED_BIN", value_name = "DIR")]
    pub llama_bin: PathBuf,
}

#[derive(Subcommand)]
pub enum RouterCommand {
    /// Fit the bundle's router on labelled prompts, print held-out metrics, store it in the bundle.
    Train(TrainArgs),
}

#[derive(Args)]
pub struct TrainArgs {
    bundle: PathBuf,
    /// JSON lines {"text": ..., "expert": ...}; "expert" is an expert of the bundle or "base".
    #[arg(long)]
    data: PathBuf,
    /// Held-out prompts (same format); without it, --holdout of --data is held out, whole
    /// "source"s at a time.
    #[arg(long)]
    eval: Option<PathBuf>,
    #[arg(long, default_value_t = 0.2)]
    holdout: f64,
    #[arg(long, default_value_t = 1)]
    seed: u64,
    /// Below this confidence the base model serves (stored in the bundle).
    #[arg(long, default_value_t = 0.5)]
    threshold: f32,
    /// L2 penalty of the logistic regression (on standardised features).
    #[arg(long, default_value_t = 10.0)]
    alpha: f64,
    #[command(flatten)]
    llama: LlamaBin,
}

#[derive(Args)]
pub struct RouteArgs {
    bundle: PathBuf,
    /// A prompt to route (repeatable).
    #[arg(long, required_unless_present = "file")]
    text: Vec<String>,
    /// JSON lines with "text" (and optionally "expert", to score the router).
    #[arg(long, conflicts_with = "text")]
    file: Option<PathBuf>,
    /// Overrides the threshold stored in the bundle.
    #[arg(long)]
    threshold: Option<f32>,
    #[command(flatten)]
    llama: LlamaBin,
}

struct Prompt {
    text: String,
    label: Option<String>,
    /// Where the prompt comes from (a template, a conversation); held-out splits keep sources whole.
    source: Option<String>,
}

fn read_prompts(path: &Path) -> Result<Vec<Prompt>> {
    let file = std::fs::File::open(path).with_context(|| format!("cannot open {}", path.display()))?;
    let mut prompts = Vec::new();
    for (i, line) in BufReader::new(file).lines().enumerate() {
        let line = line.with_context(|| format!("{}: cannot read line {}", path.display(), i + 1))?;
        if line.trim().is_empty() {
            continue;
        }
        let at = || format!("{}:{}", path.display(), i + 1);
        let v: serde_json::Value = serde_json::from_str(&line).with_context(|| format!("{}: not JSON", at()))?;
        let Some(text) = v.get("text").and_then(|t| t.as_str()) else {
            bail!("{}: no string \"text\"", at());
        };
        let label = match v.get("expert") {
            None | Some(serde_json::Value::Null) => None,
            Some(serde_json::Value::String(s)) => Some(s.clone()),
            Some(_) => bail!("{}: \"expert\" is not a string", at()),
        };
        let source = v.get("source").and_then(|s| s.as_str()).map(String::from);
        prompts.push(Prompt { text: text.to_string(), label, source });
    }
    if prompts.is_empty() {
        bail!("{}: no prompts", path.display());
    }
    Ok(prompts)
}

/// Tokenizes every text with the model's vocabulary, as llama.cpp does when routing (no BOS, no
/// special tokens parsed): one `llama-tokenize --lines` process for all of them.
fn tokenize(llama: &LlamaBin, model: &Path, texts: &[&str]) -> Result<Vec<Vec<i32>>> {
    let exe = llama.llama_bin.join("llama-tokenize");
    let mut child = Command::new(&exe)
        .args(["--stdin", "--lines", "--ids", "--no-bos", "--no-parse-special", "--log-disable", "-m"])
        .arg(model)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .with_context(|| {
            format!("cannot run {} (set --llama-bin to the patched llama.cpp's bin folder)", exe.display())
        })?;
    let input: String = texts.iter().map(|t| escape_prompt_line(t) + "\n").collect();
    let mut stdin = child.stdin.take().expect("piped");
    // written from a thread while wait_with_output drains stdout and stderr: no pipe can fill up
    let writer = std::thread::spawn(move || stdin.write_all(input.as_bytes()));
    let out = child.wait_with_output()?;
    let written = writer.join().expect("writer thread");
    if !out.status.success() {
        bail!("{} failed ({}): {}", exe.display(), out.status, String::from_utf8_lossy(&out.stderr).trim());
    }
    written.with_context(|| format!("writing prompts to {}", exe.display()))?;
    let tokens: Vec<Vec<i32>> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).with_context(|| format!("{}: unexpected output line '{l}'", exe.display())))
        .collect::<Result<_>>()?;
    if tokens.len() != texts.len() {
        bail!("{} returned {} token lists for {} prompts", exe.display(), tokens.len(), texts.len());
    }
    Ok(tokens)
}

/// Holds out about `fraction` of the prompts, whole sources at a time (prompts sharing a
/// "source", such as one template, stay on one side), shuffled by `seed`.
fn hold_out(data: Vec<Prompt>, fraction: f64, seed: u64) -> Result<(Vec<Prompt>, Vec<Prompt>)> {
    if !(fraction > 0.0 && fraction < 1.0) {
        bail!("--holdout {fraction} must be between 0 and 1 (exclusive)");
    }
    let mut groups: Vec<(String, Vec<Prompt>)> = Vec::new();
    let mut index = std::collections::HashMap::new();
    for (i, p) in data.into_iter().enumerate() {
        let key = p.source.clone().unwrap_or_else(|| format!("#{i}"));
        let g = *index.entry(key.clone()).or_insert_with(|| {
            groups.push((key, Vec::new()));
            groups.len() - 1
        });
        groups[g].1.push(p);
    }
    groups.shuffle(&mut rand_chacha::ChaCha8Rng::seed_from_u64(seed));
    let total: usize = groups.iter().map(|(_, g)| g.len()).sum();
    let (mut train, mut held) = (Vec::new(), Vec::new());
    for (_, g) in groups {
        if (held.len() as f64) < fraction * total as f64 {
            held.extend(g);
        } else {
            train.extend(g);
        }
    }
    if train.is_empty() || held.is_empty() {
        bail!("--holdout {fraction} leaves {} training and {} held-out prompts", train.len(), held.len());
    }
    Ok((train, held))
}

pub fn train(c: RouterCommand) -> Result<()> {
    let RouterCommand::Train(a) = c;
    if !(0.0..=1.0).contains(&a.threshold) {
        bail!("--threshold {} must be between 0 and 1", a.threshold);
    }
    let bundle = Bundle::open(&a.bundle)?;
    let (data, held_out) = match &a.eval {
        Some(p) => (read_prompts(&a.data)?, read_prompts(p)?),
        None => hold_out(read_prompts(&a.data)?, a.holdout, a.seed)?,
    };

    // classes: the bundle's experts that the data names, in bundle order, then base if named
    let labels: Vec<&str> = data.iter().map(|p| p.label.as_deref().unwrap_or("")).collect();
    let mut classes: Vec<String> =
        bundle.experts.iter().map(|e| e.name.clone()).filter(|n| labels.contains(&n.as_str())).collect();
    if labels.contains(&BASE) {
        classes.push(BASE.to_string());
    }
    let class_of = |p: &Prompt, file: &Path| -> Result<usize> {
        let label = p.label.as_deref().with_context(|| format!("{}: a prompt has no \"expert\"", file.display()))?;
        classes.iter().position(|c| c == label).with_context(|| {
            format!(
                "{}: \"expert\": \"{label}\" is not among the experts the data trains ({})",
                file.display(),
                classes.join(", ")
            )
        })
    };
    let eval_file = a.eval.as_deref().unwrap_or(&a.data);
    let y: Vec<usize> = data.iter().map(|p| class_of(p, &a.data)).collect::<Result<_>>()?;
    let y_eval: Vec<usize> = held_out.iter().map(|p| class_of(p, eval_file)).collect::<Result<_>>()?;
    if classes.len() < 2 {
        bail!(
            "{}: a router needs prompts of at least two classes (experts of the bundle or base); found {}",
            a.data.display(),
            classes.join(", ")
        );
    }

    // the bundle's own mapping serves the embedding rows
    let embedding = TokenEmbedding::new(bundle.file)?;
    let texts: Vec<&str> = data.iter().chain(&held_out).map(|p| p.text.as_str()).collect();
    let t = Instant::now();
    let tokens = tokenize(&a.llama, &a.bundle, &texts)?;
    eprintln!("tokenized {} prompts in {:.1} s", texts.len(), t.elapsed().as_secs_f64());
    let x: Vec<Vec<f32>> = tokens.iter().map(|t| embedding.features(t)).collect::<switchyard::Result<_>>()?;
    let (x_train, x_eval) = x.split_at(data.len());

    let opts = TrainOptions { alpha: a.alpha, threshold: a.threshold, ..TrainOptions::default() };
    let t = Instant::now();
    let head = fit(x_train, &y, classes.clone(), &opts)?;
    eprintln!("fitted {} classes on {} prompts in {:.1} s", classes.len(), data.len(), t.elapsed().as_secs_f64());

    let score = |prompts: &[Prompt], xs: &[Vec<f32>], ys: &[usize], ts: &[Vec<i32>]| {
        let mut eval = Evaluation::new(with_base(&classes));
        for (((p, x), &y), t) in prompts.iter().zip(xs).zip(ys).zip(ts) {
            let route = head.route(x, t.is_empty(), None);
            eval.add(y, eval.class_index(route.expert).expect("a class or base"), p.source.as_deref());
        }
        eval
    };
    let train_eval = score(&data, x_train, &y, &tokens[..data.len()]);
    println!("training set: accuracy {:.4} ({} prompts)", train_eval.accuracy(), train_eval.total());
    println!("held-out set (threshold {}):\n{}", a.threshold, score(&held_out, x_eval, &y_eval, &tokens[data.len()..]));
    switchyard::router::store(&a.bundle, &head)?;
    println!("router stored in {}", a.bundle.display());
    Ok(())
}

/// The classes a route can end in: the head's, plus base when the threshold can choose it.
fn with_base(classes: &[String]) -> Vec<String> {
    let mut all = classes.to_vec();
    if !all.iter().any(|c| c == BASE) {
        all.push(BASE.to_string());
    }
    all
}

pub fn route(a: RouteArgs) -> Result<()> {
    let Some(router) = PromptRouter::open(&a.bundle)? else {
        bail!("{}: the bundle has no router (add one with `switchyard router train`)", a.bundle.display());
    };
    let prompts = match &a.file {
        Some(f) => read_prompts(f)?,
        None => a.text.iter().map(|t| Prompt { text: t.clone(), label: None, source: None }).collect(),
    };
    let texts: Vec<&str> = prompts.iter().map(|p| p.text.as_str()).collect();
    let tokens = tokenize(&a.llama, &a.bundle, &texts)?;
    let mut eval = Evaluation::new(with_base(&router.head.classes));
    let mut scored = 0;
    let t = Instant::now();
    let routes = tokens.iter().map(|t| router.route(t, a.threshold)).collect::<switchyard::Result<Vec<_>>>()?;
    let elapsed = t.elapsed();
    println!("expert\tconfidence\tprompt");
    for (p, r) in prompts.iter().zip(&routes) {
        let excerpt: String = p.text.chars().take(60).map(|c| if c.is_control() { ' ' } else { c }).collect();
        println!("{}\t{:.4}\t{excerpt}", r.expert, r.confidence);
        if let Some(truth) = p.label.as_deref().and_then(|l| eval.class_index(l)) {
            eval.add(truth, eval.class_index(r.expert).expect("a class or base"), p.source.as_deref());
            scored += 1;
        }
    }
    let n_tokens: usize = tokens.iter().map(Vec::len).sum();
    eprintln!(
        "routed {} prompts ({n_tokens} tokens) in {:.3} ms ({:.2} us per prompt)",
        prompts.len(),
        elapsed.as_secs_f64() * 1e3,
        elapsed.as_secs_f64() * 1e6 / prompts.len() as f64
    );
    if scored > 0 {
        print!("{eval}");
    }
    Ok(())
}
