//! Model-level routing on the real pieces: a SmolLM2-135M bundle with experts math, code and
//! chat, its router trained on the real labelled prompts of scripts/fetch-data.sh, tokenized
//! by the patched llama.cpp; then "auto" in llama-server and llama-completion.

mod common;

use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use common::server::Server;
use common::{sy_err, sy_ok};
use serde_json::{json, Value};
use switchyard::bundle::Bundle;
use switchyard::router::PromptRouter;
use switchyard::switch::Switcher;

struct Trained {
    _dir: tempfile::TempDir,
    bundle: PathBuf,
    untrained: PathBuf,
    data: PathBuf,
    bin: PathBuf,
    /// `router train`'s standard output.
    report: String,
}

/// Built once per test binary: the bundle, a copy without router, and the training report.
fn trained() -> Option<&'static Trained> {
    static TRAINED: OnceLock<Option<Trained>> = OnceLock::new();
    TRAINED
        .get_or_init(|| {
            let (smol, bin, data) = (common::smollm2()?, common::llama_patched_bin()?, common::route_data()?);
            let dir = tempfile::tempdir().unwrap();
            let p = |name: &str| dir.path().join(name);
            let base_hf = p("base-hf");
            sy_ok(&["to-hf", smol.to_str().unwrap(), "-o", base_hf.to_str().unwrap()]);
            let mut pack = vec!["pack".to_string(), "--base-gguf".into(), smol.to_str().unwrap().into()];
            pack.extend(["--base".into(), base_hf.to_str().unwrap().into()]);
            for (seed, e) in ["math", "code", "chat"].iter().enumerate() {
                let seed = (seed + 1).to_string();
                sy_ok(&[
                    "synth",
                    "expert",
                    "--base",
                    base_hf.to_str().unwrap(),
                    "--seed",
                    &seed,
                    "-o",
                    p(e).to_str().unwrap(),
                ]);
                pack.extend(["--expert".into(), format!("{e}={}", p(e).display())]);
            }
            let untrained = p("untrained.gguf");
            pack.extend(["-o".into(), untrained.to_str().unwrap().into()]);
            sy_ok(&pack);
            for d in ["base-hf", "math", "code", "chat"] {
                std::fs::remove_dir_all(p(d)).unwrap();
            }
            let bundle = p("bundle.gguf");
            std::fs::copy(&untrained, &bundle).unwrap();
            let report = sy_ok(&[
                "router",
                "train",
                bundle.to_str().unwrap(),
                "--data",
                data.join("route-train.jsonl").to_str().unwrap(),
                "--eval",
                data.join("route-eval.jsonl").to_str().unwrap(),
                "--llama-bin",
                bin.to_str().unwrap(),
            ]);
            Some(Trained { _dir: dir, bundle, untrained, data, bin, report })
        })
        .as_ref()
}

/// The number after "accuracy" in the held-out section of a report.
fn held_out_accuracy(report: &str) -> f64 {
    let section = report.split("held-out").nth(1).unwrap_or(report);
    let line =
        section.lines().find(|l| l.starts_with("accuracy")).unwrap_or_else(|| panic!("no accuracy in:\n{report}"));
    line.split_whitespace().nth(1).unwrap().parse().unwrap()
}

fn s(p: &Path) -> &str {
    p.to_str().unwrap()
}

/// (family, accuracy) of the "source family" table of a report.
fn family_accuracies(report: &str) -> Vec<(String, f64)> {
    let table = report.split("source family").nth(1).unwrap_or_else(|| panic!("no source families in:\n{report}"));
    table
        .lines()
        .skip(1)
        .map_while(|l| {
            let (family, rest) = l.split_once(")  ")?;
            let accuracy = rest.split_whitespace().next()?.parse().ok()?;
            Some((format!("{family})").trim().to_string(), accuracy))
        })
        .collect()
}

#[test]
fn router_routes_held_out_real_prompts_at_95_percent_or_better() {
    let Some(t) = trained() else { return };
    let accuracy = held_out_accuracy(&t.report);
    assert!(accuracy >= 0.95, "held-out accuracy {accuracy}:\n{}", t.report);
    assert!(t.report.contains("precision") && t.report.contains("truth\\pred"), "{}", t.report);
    // and no source of prompts is left behind: word problems and mathematics_dataset's modules,
    // HumanEval and ShareGPT's code, ShareGPT's conversation
    let families = family_accuracies(&t.report);
    let names: Vec<&str> = families.iter().map(|(f, _)| f.as_str()).collect();
    assert_eq!(
        names,
        ["HumanEval (code)", "gsm-symbolic (math)", "mathematics-dataset (math)", "sharegpt (chat)", "sharegpt (code)"],
        "{}",
        t.report
    );
    for (family, accuracy) in &families {
        assert!(*accuracy >= 0.90, "{family}: held-out accuracy {accuracy}:\n{}", t.report);
    }
    // `route` on the same prompts reproduces the held-out score from the stored router
    let out = sy_ok(&["route", s(&t.bundle), "--file", s(&t.data.join("route-eval.jsonl")), "--llama-bin", s(&t.bin)]);
    assert_eq!(held_out_accuracy(&format!("held-out\n{out}")), accuracy, "{out}");
    assert_eq!(family_accuracies(&out), families, "{out}");
}

#[test]
fn router_is_stored_in_the_bundle_which_stays_valid() {
    let Some(t) = trained() else { return };
    let router = PromptRouter::open(&t.bundle).unwrap().expect("a router");
    assert_eq!(router.head.classes, ["math", "code", "chat"]);
    assert_eq!(router.head.threshold, 0.5);
    assert!(PromptRouter::open(&t.untrained).unwrap().is_none());
    // same base and experts: the rewrite touched metadata only
    let (before, after) = (Bundle::open(&t.untrained).unwrap(), Bundle::open(&t.bundle).unwrap());
    assert_eq!(before.fingerprint, after.fingerprint);
    assert_eq!(before.file.tensors.len(), after.file.tensors.len());
    for (a, b) in before.file.tensors.iter().zip(&after.file.tensors) {
        assert_eq!(before.file.tensor_data(a), after.file.tensor_data(b), "{}", a.name);
    }
    Switcher::open(&t.bundle).unwrap();

    // training again replaces the router (here with another threshold) and keeps no copy
    let copy = t.bundle.with_file_name("retrained.gguf");
    std::fs::copy(&t.bundle, &copy).unwrap();
    let eval = t.data.join("route-eval.jsonl");
    sy_ok(&["router", "train", s(&copy), "--data", s(&eval), "--threshold", "0.8", "--llama-bin", s(&t.bin)]);
    let again = PromptRouter::open(&copy).unwrap().unwrap();
    assert_eq!(again.head.threshold, 0.8);
    let md = &Bundle::open(&copy).unwrap().file.metadata;
    assert_eq!(md.len(), after.file.metadata.len());
    std::fs::remove_file(&copy).unwrap();
}

#[test]
fn routing_errors_name_what_is_wrong() {
    let Some(t) = trained() else { return };
    let err = sy_err(&["route", s(&t.untrained), "--text", "hello", "--llama-bin", s(&t.bin)]);
    assert!(err.contains("no router") && err.contains("untrained.gguf"), "{err}");
    let bad = t.bundle.with_file_name("bad.jsonl");
    std::fs::write(&bad, "{\"text\": \"hi\", \"expert\": \"math\"}\n{\"text\": \"yo\", \"expert\": \"poetry\"}\n")
        .unwrap();
    let copy = t.bundle.with_file_name("bad-train.gguf");
    std::fs::copy(&t.untrained, &copy).unwrap();
    let err = sy_err(&["router", "train", s(&copy), "--data", s(&bad), "--eval", s(&bad), "--llama-bin", s(&t.bin)]);
    assert!(err.contains("bad.jsonl") && err.contains("poetry"), "{err}");
    std::fs::write(&bad, "{\"text\": \"hi\", \"expert\": \"math\"}\nnot json\n").unwrap();
    let err = sy_err(&["router", "train", s(&copy), "--data", s(&bad), "--llama-bin", s(&t.bin)]);
    assert!(err.contains("bad.jsonl:2"), "{err}");
    let train = t.data.join("route-eval.jsonl");
    let err =
        sy_err(&["router", "train", s(&copy), "--data", s(&train), "--threshold", "1.5", "--llama-bin", s(&t.bin)]);
    assert!(err.contains("--threshold 1.5"), "{err}");
    std::fs::write(&bad, "{\"text\": \"hi\", \"expert\": \"math\"}\n{\"text\": \"yo\", \"expert\": \"math\"}\n")
        .unwrap();
    let err = sy_err(&["router", "train", s(&copy), "--data", s(&bad), "--eval", s(&bad), "--llama-bin", s(&t.bin)]);
    assert!(err.contains("at least two classes"), "{err}");
    assert!(PromptRouter::open(&copy).unwrap().is_none(), "a failed training leaves the bundle as it was");
}

/// Many prompts in one llama-tokenize process give the same tokens as one process per prompt
/// (newlines, backslashes, tabs and non-ASCII text survive the line protocol).
#[test]
fn tokenizing_prompt_lines_equals_tokenizing_each_prompt() {
    let Some(t) = trained() else { return };
    let prompts = [
        "plain words",
        "two\nlines\\n and a backslash \\ \t tab\r",
        "   spaces, émigré 数学 🙂",
        "",
        "<|im_start|>user",
    ];
    let tool = t.bin.join("llama-tokenize");
    let mut child = std::process::Command::new(&tool)
        .args(["--stdin", "--lines", "--ids", "--no-bos", "--no-parse-special", "--log-disable", "-m", s(&t.bundle)])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    // the CLI's escaping, so this also tests what `router train` sends
    let escaped: String = prompts.iter().map(|p| switchyard::router::escape_prompt_line(p) + "\n").collect();
    use std::io::Write;
    child.stdin.take().unwrap().write_all(escaped.as_bytes()).unwrap();
    let out = child.wait_with_output().unwrap();
    let lines: Vec<String> = String::from_utf8(out.stdout).unwrap().lines().map(String::from).collect();
    assert_eq!(lines.len(), prompts.len());
    assert_eq!(lines[3], "[]", "an empty line is an empty prompt");
    for (p, line) in prompts.iter().zip(&lines).filter(|(p, _)| !p.is_empty()) {
        let one = std::process::Command::new(&tool)
            .args([
                "--ids",
                "--no-bos",
                "--no-parse-special",
                "--log-disable",
                "--no-escape",
                "-m",
                s(&t.bundle),
                "-p",
                p,
            ])
            .output()
            .unwrap();
        assert_eq!(String::from_utf8(one.stdout).unwrap().trim(), line, "{p:?}");
    }
}

/// A greedy chat request, its prompt recomputed every time: a prompt-cache hit evaluates fewer
/// tokens per batch, which changes the low bits of the logits.
fn chat(model: &str, text: &str) -> Value {
    json!({"model": model, "messages": [{"role": "user", "content": text}], "max_tokens": 8, "temperature": 0.0,
           "cache_prompt": false})
}

/// A few held-out prompts of each domain with the expert `route` picks for them.
fn routed_samples(t: &Trained) -> Vec<(String, String)> {
    let eval = std::fs::read_to_string(t.data.join("route-eval.jsonl")).unwrap();
    let mut texts = Vec::new();
    for domain in ["math", "code", "chat"] {
        let rows = eval.lines().map(|l| serde_json::from_str::<Value>(l).unwrap());
        let picked = rows.filter(|v| v["expert"] == domain && v["text"].as_str().unwrap().len() < 400).take(2);
        texts.extend(picked.map(|v| v["text"].as_str().unwrap().to_string()));
    }
    let mut args = vec!["route".to_string(), s(&t.bundle).into(), "--llama-bin".into(), s(&t.bin).into()];
    for text in &texts {
        args.extend(["--text".to_string(), text.clone()]);
    }
    let out = sy_ok(&args);
    let experts: Vec<String> = out.lines().skip(1).map(|l| l.split('\t').next().unwrap().to_string()).collect();
    assert_eq!(experts.len(), texts.len(), "{out}");
    texts.into_iter().zip(experts).collect()
}

#[test]
fn server_auto_serves_each_request_with_the_routed_expert() {
    let Some(t) = trained() else { return };
    let samples = routed_samples(t);
    let routed: std::collections::BTreeSet<&str> = samples.iter().map(|(_, e)| e.as_str()).collect();
    assert!(routed.len() >= 3, "the samples should reach several experts: {samples:?}");

    let server = Server::start(&t.bin, &t.bundle, 1);
    let (status, models) = server.request("GET", "/v1/models", None).unwrap();
    assert_eq!(status, 200);
    let ids: Vec<&str> = models["data"].as_array().unwrap().iter().map(|m| m["id"].as_str().unwrap()).collect();
    assert_eq!(ids, ["base", "math", "code", "chat", "auto"]);
    for (text, expert) in &samples {
        let (status, auto) = server.post("/v1/chat/completions", chat("auto", text));
        assert_eq!(status, 200, "{auto}");
        assert_eq!(auto["model"], json!(expert), "the response names the routed expert for {text:?}");
        let (_, named) = server.post("/v1/chat/completions", chat(expert, text));
        assert_eq!(auto["choices"][0]["message"], named["choices"][0]["message"], "{text:?}");
    }
    // a threshold above 1 sends every request to base
    let mut req = chat("auto", &samples[0].0);
    req["router_threshold"] = json!(2.0);
    assert_eq!(server.post("/v1/chat/completions", req).1["model"], json!("base"));
    drop(server);

    // --expert auto makes routing the default for requests that name no model
    let server = Server::start_with(&t.bin, &t.bundle, 1, &["--expert", "auto"]);
    let (text, expert) = &samples[0];
    let mut req = chat("auto", text);
    req.as_object_mut().unwrap().remove("model");
    assert_eq!(server.post("/v1/chat/completions", req).1["model"], json!(expert));
    drop(server);

    // a bundle without a router has no "auto"
    let server = Server::start(&t.bin, &t.untrained, 1);
    let (status, v) = server.post("/v1/chat/completions", chat("auto", text));
    assert_eq!(status, 400, "{v}");
}

#[test]
fn completion_expert_auto_runs_the_routed_expert() {
    let Some(t) = trained() else { return };
    let samples = routed_samples(t);
    let (text, expert) = samples.iter().find(|(_, e)| e != "base").unwrap();
    let run = |model: &Path, choice: &str| {
        let out = std::process::Command::new(t.bin.join("llama-completion"))
            .args(["-m", s(model), "--expert", choice, "-p", text, "-n", "8", "--temp", "0", "-no-cnv", "-t", "2"])
            .args(["--no-warmup", "-c", "512"])
            .stdin(std::process::Stdio::null())
            .output()
            .unwrap();
        (
            out.status.success(),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    };
    let (ok, auto_out, log) = run(&t.bundle, "auto");
    assert!(ok, "{log}");
    assert!(log.contains(&format!("routed the prompt to '{expert}'")), "{log}");
    let (ok, named_out, log) = run(&t.bundle, expert);
    assert!(ok, "{log}");
    assert_eq!(auto_out, named_out);
    let (ok, _, log) = run(&t.untrained, "auto");
    assert!(!ok && log.contains("has no router"), "{log}");
}

/// examples/switchyard_route_bench.c (the routing-overhead benchmark) on a few prompts: it
/// routes through llama.cpp's C API as the library does and times a prefill beside it.
#[test]
fn route_bench_example_routes_like_the_cli() {
    let Some(t) = trained() else { return };
    let samples = routed_samples(t);
    let dir = tempfile::tempdir().unwrap();
    let exe = common::build_example(&t.bin, "switchyard_route_bench", dir.path());
    let tsv: String = samples
        .iter()
        .map(|(text, expert)| {
            format!("{expert}\t{}\n", text.replace('\\', "\\\\").replace('\n', "\\n").replace('\t', "\\t"))
        })
        .collect();
    std::fs::write(dir.path().join("prompts.tsv"), tsv).unwrap();
    let out =
        std::process::Command::new(&exe).arg(&t.bundle).arg(dir.path().join("prompts.tsv")).arg("2").output().unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{stdout}{}", String::from_utf8_lossy(&out.stderr));
    // labelled with the CLI's routes, so llama.cpp's must agree on every prompt
    let n = samples.len();
    assert!(stdout.contains(&format!("routing accuracy 1.0000 ({n}/{n})")), "{stdout}");
    assert!(stdout.contains("route/prefill"), "{stdout}");
}

/// llama-cli runs llama-server's code in-process: `--expert auto` routes its prompt too.
#[test]
fn cli_expert_auto_answers_like_the_routed_expert() {
    let Some(t) = trained() else { return };
    let samples = routed_samples(t);
    let answer = |text: &str, choice: &str| {
        let out = std::process::Command::new(t.bin.join("llama-cli"))
            .args(["-m", s(&t.bundle), "--expert", choice, "-p", text, "-n", "12", "--temp", "0"])
            .args(["-st", "--simple-io", "--no-warmup", "-c", "1024", "-t", "2"])
            .stdin(std::process::Stdio::null())
            .output()
            .unwrap();
        let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
        assert!(out.status.success(), "{stdout}{}", String::from_utf8_lossy(&out.stderr));
        // the answer: from the echoed prompt to the timing line
        let start = stdout.find(text).unwrap_or_else(|| panic!("no prompt echo in {stdout}"));
        let end = stdout[start..].find("[ Prompt:").map_or(stdout.len(), |e| start + e);
        stdout[start..end].trim().to_string()
    };
    // the first of a few routed prompts whose expert answers differently from base (a synthetic
    // expert may agree with base on 12 tokens of some prompt); only then does auto show anything
    let shown =
        samples.iter().filter(|(text, e)| e != "base" && !text.contains('\n')).take(5).find_map(|(text, expert)| {
            let routed = answer(text, expert);
            (routed != answer(text, "base")).then_some((text, routed))
        });
    let Some((text, routed)) = shown else {
        panic!("no expert answered differently from base on five routed prompts");
    };
    assert_eq!(answer(text, "auto"), routed);
}
