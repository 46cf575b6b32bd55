//! The llama.cpp plugin against llama.cpp itself: the patched build running a bundle as its
//! base must compute exactly what it computes on the base GGUF (the base's weights are used as
//! the file holds them); switched to an expert, whose delta the graph adds as a second product,
//! its next-token distributions must stay within a small KL divergence of `switchyard
//! extract`'s standalone GGUF of that expert (different arithmetic, same weights); and the
//! patch must not change anything for plain models.

mod common;

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use common::{sy_ok, Tiny};
use switchyard::GgmlType;

fn run(bin: &Path, tool: &str, args: &[&str]) -> Output {
    Command::new(bin.join(tool)).args(args).output().unwrap()
}

fn ok(out: Output, what: &str) -> String {
    assert!(out.status.success(), "{what} failed:\n{}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Greedy completion text of `model` (optionally switched to `expert`).
fn complete(bin: &Path, model: &Path, expert: Option<&str>) -> String {
    complete_with(bin, model, expert, &[]).0
}

/// [`complete`] with more llama-completion arguments; also returns its log (stderr).
fn complete_with(bin: &Path, model: &Path, expert: Option<&str>, extra: &[&str]) -> (String, String) {
    let mut args = vec!["-m", model.to_str().unwrap(), "-p", "The three primary colors are", "-n", "24", "--temp", "0"];
    args.extend(["-no-cnv", "--no-warmup", "--simple-io", "-t", "2", "-c", "256", "--seed", "1"]);
    if let Some(e) = expert {
        args.extend(["--expert", e]);
    }
    args.extend(extra);
    let out = run(bin, "llama-completion", &args);
    let log = String::from_utf8_lossy(&out.stderr).into_owned();
    (ok(out, &format!("llama-completion {expert:?} {extra:?}")), log)
}

/// Every per-chunk perplexity llama-perplexity prints and the final one. They expose the
/// logits, but are not bit-reproducible: llama-perplexity hands tokens to threads dynamically
/// and sums per thread, so compare them with [`assert_close`].
fn perplexity(bin: &Path, model: &Path, expert: Option<&str>) -> Vec<f64> {
    let mut args = vec!["-m", model.to_str().unwrap(), "-f", "/usr/share/common-licenses/Apache-2.0", "-c", "128"];
    args.extend(["--chunks", "3", "-t", "2", "-b", "128"]);
    if let Some(e) = expert {
        args.extend(["--expert", e]);
    }
    let out = run(bin, "llama-perplexity", &args);
    assert!(out.status.success(), "llama-perplexity failed:\n{}", String::from_utf8_lossy(&out.stderr));
    let log = String::from_utf8_lossy(&out.stderr).into_owned() + &String::from_utf8_lossy(&out.stdout);
    let mut ppl: Vec<f64> = Vec::new();
    for l in log.lines() {
        if l.starts_with('[') {
            ppl.extend(l.split(',').filter_map(|c| c.split(']').nth(1)).filter_map(|v| v.parse::<f64>().ok()));
        } else if let Some(v) = l.split("Final estimate: PPL = ").nth(1) {
            ppl.push(v.split_whitespace().next().unwrap().parse().unwrap());
        }
    }
    assert_eq!(ppl.len(), 4, "expected 3 chunks and a final estimate in:\n{log}");
    ppl
}

/// Mean KL divergence of `model`'s next-token distributions (switched to `expert`) from
/// `reference`'s, over common::llama_perplexity_run's text (llama-perplexity --kl-divergence).
fn kl_divergence(bin: &Path, reference: &Path, model: &Path, expert: Option<&str>, work: &Path) -> f64 {
    let expert: Vec<&str> = expert.map(|e| vec!["--expert", e]).unwrap_or_default();
    kl_divergence_with(bin, reference, model, &expert, work)
}

/// [`kl_divergence`] of `model` run with llama-perplexity arguments `extra`.
fn kl_divergence_with(bin: &Path, reference: &Path, model: &Path, extra_args: &[&str], work: &Path) -> f64 {
    let logits = work.join(format!("logits-{}.bin", reference.file_stem().unwrap().to_string_lossy()));
    let logits = logits.to_str().unwrap();
    if !Path::new(logits).exists() {
        let (ok, log) = common::llama_perplexity_run(bin, reference, &["--kl-divergence-base", logits]);
        assert!(ok, "llama-perplexity saving logits failed:\n{log}");
    }
    let mut extra = vec!["--kl-divergence-base", logits, "--kl-divergence"];
    extra.extend(extra_args);
    let (ok, log) = common::llama_perplexity_run(bin, model, &extra);
    assert!(ok, "llama-perplexity --kl-divergence failed:\n{log}");
    let line = log
        .lines()
        .find(|l| l.starts_with("Mean") && l.contains("KLD:"))
        .unwrap_or_else(|| panic!("no KLD in:\n{log}"));
    line.split("KLD:").nth(1).unwrap().split_whitespace().next().unwrap().parse().unwrap()
}

fn assert_close(a: &[f64], b: &[f64], what: &str) {
    assert_eq!(a.len(), b.len(), "{what}");
    for (x, y) in a.iter().zip(b) {
        assert!((x - y).abs() <= 1e-9 * x.abs().max(y.abs()), "{what}: {a:?} vs {b:?}");
    }
}

struct Fixture {
    tiny: Tiny,
    bundle: PathBuf,
}

fn fixture(smol: &Path) -> Fixture {
    let tiny = Tiny::new(GgmlType::Q8_0, Some(smol));
    let bundle = tiny.path("bundle.gguf");
    sy_ok(&tiny.pack_args(&tiny.experts, &[], &bundle));
    for e in ["math", "code"] {
        sy_ok(&[
            "extract",
            bundle.to_str().unwrap(),
            "--expert",
            e,
            "-o",
            tiny.path(&format!("{e}.gguf")).to_str().unwrap(),
        ]);
    }
    Fixture { tiny, bundle }
}

#[test]
fn bundle_runs_its_base_exactly_and_each_expert_within_a_small_kl_of_its_extracted_gguf() {
    let (Some(smol), Some(bin)) = (common::smollm2(), common::llama_patched_bin()) else { return };
    let f = fixture(&smol);
    let work = f.tiny.dir.path();
    // The base: the same weights and the same arithmetic as the plain base GGUF.
    let base = f.tiny.base_gguf.clone();
    let base_text = complete(&bin, &base, None);
    for expert in [None, Some("base")] {
        assert_eq!(complete(&bin, &f.bundle, expert), base_text, "completion of the bundle at {expert:?}");
        assert_close(&perplexity(&bin, &f.bundle, expert), &perplexity(&bin, &base, None), "perplexity of the base");
    }
    let mut texts = vec![base_text];
    for e in ["math", "code"] {
        let extracted = f.tiny.path(&format!("{e}.gguf"));
        // W x + D x against (W + D) x in F16: a stated bound, and far below the distance the
        // expert's delta makes, so a delta left out or applied twice cannot pass.
        let kl = kl_divergence(&bin, &extracted, &f.bundle, Some(e), work);
        let kl_base = kl_divergence(&bin, &extracted, &base, None, work);
        assert!(kl <= 0.005 && kl <= kl_base / 20.0, "expert {e}: KL {kl} from its extracted GGUF (base: {kl_base})");
        texts.push(complete(&bin, &f.bundle, Some(e)));
    }
    assert!(texts[0] != texts[1] || texts[1] != texts[2], "experts should not all generate the same text");
}

/// Low-rank deltas (`pack --rank`): the graph's W x + B (A x) against W + B A materialized in
/// F16 by extract, within the same bound as codec deltas, and cheaper in the graph.
#[test]
fn a_low_rank_bundle_runs_each_expert_within_a_small_kl_of_its_extracted_gguf() {
    let (Some(smol), Some(bin)) = (common::smollm2(), common::llama_patched_bin()) else { return };
    let tiny = Tiny::low_rank(GgmlType::Q8_0, Some(&smol));
    let work = tiny.dir.path();
    let bundle = tiny.path("bundle.gguf");
    sy_ok(&tiny.pack_args(&tiny.experts, &["--rank", "32"], &bundle));
    let listing = sy_ok(&["inspect", bundle.to_str().unwrap()]);
    assert!(listing.contains("format version 2"), "{listing}");
    let kinds: Vec<&str> = listing
        .lines()
        .filter(|l| l.trim_start().starts_with("blk."))
        .filter_map(|l| l.split_whitespace().nth(1))
        .collect();
    assert!(kinds.contains(&"lowrank") && !kinds.contains(&"codec"), "every linear weight factored:\n{listing}");
    let mut texts = vec![complete(&bin, &tiny.base_gguf, None)];
    for e in ["math", "code"] {
        let extracted = tiny.path(&format!("{e}.gguf"));
        sy_ok(&["extract", bundle.to_str().unwrap(), "--expert", e, "-o", extracted.to_str().unwrap()]);
        let kl = kl_divergence(&bin, &extracted, &bundle, Some(e), work);
        let kl_base = kl_divergence(&bin, &extracted, &tiny.base_gguf, None, work);
        assert!(kl <= 0.005 && kl <= kl_base / 20.0, "expert {e}: KL {kl} from its extracted GGUF (base: {kl_base})");
        texts.push(complete(&bin, &bundle, Some(e)));
    }
    assert!(texts[0] != texts[1] || texts[1] != texts[2], "experts should not all generate the same text: {texts:?}");
    // The log says what the graph holds: rank 32 factors of every weight, in fewer bytes than
    // the codec's deltas of the same experts.
    let mib = |b: &Path| -> f64 {
        let b = b.to_str().unwrap();
        let a = [
            "-m",
            b,
            "-p",
            "hi",
            "-n",
            "1",
            "--expert",
            "math",
            "-v",
            "-no-cnv",
            "--no-warmup",
            "-t",
            "2",
            "-c",
            "128",
        ];
        let out = run(&bin, "llama-completion", &a);
        let log = String::from_utf8_lossy(&out.stderr);
        assert!(out.status.success(), "{log}");
        let line = log.lines().find(|l| l.contains("expert deltas of")).unwrap_or_else(|| panic!("{log}"));
        line.split("graph, ").nth(1).unwrap().split(" MiB").next().unwrap().parse().unwrap()
    };
    let codec = tiny.path("codec.gguf");
    sy_ok(&tiny.pack_args(&tiny.experts, &[], &codec));
    let (low_rank, dense) = (mib(&bundle), mib(&codec));
    assert!(low_rank < dense, "rank-32 factors take {low_rank} MiB in the graph, the codec's deltas {dense} MiB");
}

#[test]
fn the_delta_type_can_be_chosen_and_a_bad_one_is_refused_by_name() {
    let (Some(smol), Some(bin)) = (common::smollm2(), common::llama_patched_bin()) else { return };
    let f = fixture(&smol);
    let bundle = f.bundle.to_str().unwrap();
    let args = |ty: &str| {
        let kv = format!("switchyard.delta_type=str:{ty}");
        let a = ["-m", bundle, "-p", "hi", "-n", "4", "--temp", "0", "-no-cnv", "--no-warmup", "-t", "2", "-c", "128"];
        let typed = ["--override-kv", kv.as_str()];
        run(
            &bin,
            "llama-completion",
            &[&a[..], &["--expert", "math", "-v"], if ty.is_empty() { &[] } else { &typed[..] }].concat(),
        )
    };
    // The log (-v) says how many MiB of deltas the graph applies: Q8_0 takes more than the
    // default (Q4_0, which holds these 2-bit codes exactly).
    let mib = |out: &Output| -> f64 {
        let log = String::from_utf8_lossy(&out.stderr);
        assert!(out.status.success(), "{log}");
        let line =
            log.lines().find(|l| l.contains("expert deltas of")).unwrap_or_else(|| panic!("no delta line in:\n{log}"));
        line.split("graph, ").nth(1).unwrap().split(" MiB").next().unwrap().parse().unwrap()
    };
    let (q8, default) = (mib(&args("q8_0")), mib(&args("")));
    assert!(q8 > 1.5 * default, "Q8_0 deltas {q8} MiB, default {default} MiB");
    let bad = args("q9_9");
    assert!(!bad.status.success());
    let err = String::from_utf8_lossy(&bad.stderr);
    assert!(err.contains("switchyard.delta_type") && err.contains("q9_9"), "{err}");
}

/// llama-cli's single-turn answer (it runs an in-process llama-server).
fn chat(bin: &Path, model: &Path, expert: Option<&str>) -> String {
    let mut args =
        vec!["-m", model.to_str().unwrap(), "-p", "What are the three primary colors?", "-n", "24", "--temp", "0"];
    args.extend(["-st", "--simple-io", "--no-warmup", "-c", "512", "-t", "2"]);
    if let Some(e) = expert {
        args.extend(["--expert", e]);
    }
    let out = Command::new(bin.join("llama-cli")).args(&args).stdin(std::process::Stdio::null()).output().unwrap();
    let text = ok(out, "llama-cli");
    let start = text.find("> What are the three primary colors?").expect("prompt echo");
    let end = text[start..].find("[ Prompt:").map_or(text.len(), |e| start + e);
    text[start..end].trim().to_string()
}

#[test]
fn llama_cli_expert_option_runs_the_expert() {
    let (Some(smol), Some(bin)) = (common::smollm2(), common::llama_patched_bin()) else { return };
    let f = fixture(&smol);
    // The base exactly as the plain base GGUF answers; the experts answer otherwise.
    let base = chat(&bin, &f.bundle, Some("base"));
    assert_eq!(base, chat(&bin, &f.tiny.base_gguf, None), "llama-cli --expert base");
    // (The tiny random model answers every chat alike, so the switch is read from the log.)
    for e in ["math", "code"] {
        let mut args = vec!["-m", f.bundle.to_str().unwrap(), "-p", "hi", "-n", "2", "-st", "--simple-io"];
        args.extend(["--no-warmup", "-c", "256", "-t", "2", "-v", "--expert", e]);
        let out = Command::new(bin.join("llama-cli")).args(&args).stdin(std::process::Stdio::null()).output().unwrap();
        let log = String::from_utf8_lossy(&out.stderr);
        assert!(out.status.success() && log.contains(&format!("to '{e}'")), "llama-cli --expert {e}:\n{log}");
    }
}

#[test]
fn switching_in_process_matches_fresh_processes_and_unknown_experts_are_refused() {
    let (Some(smol), Some(bin)) = (common::smollm2(), common::llama_patched_bin()) else { return };
    let f = fixture(&smol);
    let exe = common::build_example(&bin, "switchyard_generate", f.tiny.dir.path());
    let generate = |model: &Path, experts: &[&str]| -> Vec<(String, String)> {
        let mut cmd = Command::new(&exe);
        cmd.arg(model).args(["The three primary colors are", "16"]).args(experts);
        ok(cmd.output().unwrap(), "switchyard_generate")
            .lines()
            .map(|l| {
                let mut f = l.split('\t');
                (f.next().unwrap().to_string(), f.next().unwrap().to_string())
            })
            .collect()
    };
    let order = ["math", "code", "math", "base", "code"];
    let switched = generate(&f.bundle, &order);
    assert_eq!(switched.len(), order.len());
    for (e, tokens) in &switched {
        let fresh = generate(&f.bundle, &[e.as_str()]);
        assert_eq!(&fresh[0].1, tokens, "expert {e}: tokens after switching differ from a fresh process's");
    }
    let out = Command::new(&exe).arg(&f.bundle).args(["hello", "4", "poetry"]).output().unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("poetry") && err.contains("math, code"), "{err}");
}

/// `extract --lora RANK`: the expert's weight-matrix deltas as a LoRA adapter stock llama.cpp
/// loads on the base GGUF (`--lora`). At the matrices' full rank the adapter holds their deltas
/// exactly (F16 factors); what it cannot hold is the expert's small norm changes. A lower rank
/// keeps less: its distance from the expert lies between the full-rank adapter's and the base's.
#[test]
fn extract_lora_writes_an_adapter_stock_llama_cpp_applies() {
    let (Some(smol), Some(stock)) = (common::smollm2(), common::llama_bin()) else { return };
    let f = fixture(&smol);
    let work = f.tiny.dir.path();
    let extracted = f.tiny.path("math.gguf");
    let kl_base = kl_divergence(&stock, &extracted, &f.tiny.base_gguf, None, work);
    let mut kl = Vec::new();
    for rank in ["64", "2"] {
        let adapter = f.tiny.path(&format!("math-lora-{rank}.gguf"));
        let out = sy_ok(&[
            "extract",
            f.bundle.to_str().unwrap(),
            "--expert",
            "math",
            "--lora",
            rank,
            "-o",
            adapter.to_str().unwrap(),
        ]);
        assert!(out.contains("weight matrices factored") && out.contains("attn_norm"), "{out}");
        kl.push(kl_divergence_with(
            &stock,
            &extracted,
            &f.tiny.base_gguf,
            &["--lora", adapter.to_str().unwrap()],
            work,
        ));
    }
    let (full, low) = (kl[0], kl[1]);
    assert!(full < low && low < kl_base, "KL from the expert: full-rank adapter {full}, rank 2 {low}, base {kl_base}");
    // measured 2026-12-05: 0.0050 against 0.0505 (rank 2: 0.0209), the rest being the norms
    assert!(
        full < kl_base / 5.0,
        "the full-rank adapter should be far closer to the expert than the base: {full} vs {kl_base}"
    );
}

/// llama.cpp's own scale-out: with `--rpc` to ggml-rpc-server (loopback here) the bundle's
/// weights and every expert's deltas live on the remote device and its graph runs there, and
/// each expert gives the tokens the same build computes locally. Both sides run ggml's CPU
/// kernels on plain buffers (`--no-repack` locally, as the RPC server's are), so the
/// arithmetic is the same.
#[test]
fn a_bundle_served_through_rpc_gives_the_tokens_it_gives_locally() {
    let (Some(smol), Some(bin)) = (common::smollm2(), common::llama_patched_bin()) else { return };
    let tiny = Tiny::new(GgmlType::Q8_0, Some(&smol));
    let bundle = tiny.path("bundle.gguf");
    sy_ok(&tiny.pack_args(&tiny.experts, &[], &bundle));
    let rpc = RpcServer::start(&bin);
    let mut texts = Vec::new();
    for expert in [Some("math"), Some("code"), None] {
        let (local, _) = complete_with(&bin, &bundle, expert, &["--no-repack"]);
        let (remote, log) = complete_with(&bin, &bundle, expert, &["--rpc", &rpc.endpoint, "-ngl", "99", "-v"]);
        // the deltas were placed on the remote device, beside their weights
        let placed = log.lines().find(|l| l.contains("expert deltas of")).unwrap_or_default();
        assert!(placed.contains("RPC0"), "the deltas are not on the RPC device: {placed:?}\nlog:\n{log}");
        assert_eq!(remote, local, "expert {expert:?} through RPC");
        texts.push(local);
    }
    assert!(texts[0] != texts[1] || texts[1] != texts[2], "experts should not all generate the same text");
}

/// ggml-rpc-server on a free loopback port, killed on drop.
struct RpcServer {
    child: std::process::Child,
    endpoint: String,
}

impl RpcServer {
    fn start(bin: &Path) -> RpcServer {
        let port = common::server::free_port();
        let exe = bin.join("ggml-rpc-server");
        assert!(exe.exists(), "{} is missing (rebuild: scripts/build-llama.sh)", exe.display());
        let child = Command::new(exe)
            .args(["-H", "127.0.0.1", "-p", &port.to_string(), "-t", "2"])
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap();
        let server = RpcServer { child, endpoint: format!("127.0.0.1:{port}") };
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(std::time::Instant::now() < deadline, "ggml-rpc-server did not listen on {port}");
            std::thread::sleep(std::time::Duration::from_millis(100));
        }
        server
    }
}

impl Drop for RpcServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[test]
fn the_patch_changes_nothing_for_plain_models() {
    let (Some(smol), Some(patched), Some(stock)) =
        (common::smollm2(), common::llama_patched_bin(), common::llama_bin())
    else {
        return;
    };
    assert_close(
        &perplexity(&patched, &smol, None),
        &perplexity(&stock, &smol, None),
        "SmolLM2 perplexity, patched vs stock",
    );
    assert_eq!(complete(&patched, &smol, None), complete(&stock, &smol, None));
    // --expert on a plain model is an error, not silently ignored.
    let out = run(
        &patched,
        "llama-completion",
        &["-m", smol.to_str().unwrap(), "-p", "hi", "-n", "1", "-no-cnv", "--expert", "math"],
    );
    assert!(!out.status.success());
}
