//! llama-server with a bundle: the request's "model" picks the expert, and every answer (tokens
//! and top probabilities at temperature 0) equals what the same build answers when serving the
//! bundle with that expert alone (`--expert NAME`, one slot): in sequence, after switching back
//! and forth, with the prompt cache (never reused across experts), under concurrent requests
//! for different experts sharing batches (text only), and through router mode. (How close an
//! expert in the bundle is to its extracted GGUF is tests/plugin_llama.rs's job.) Loopback only.

mod common;

use std::path::Path;

use common::server::Server;
use common::{sy_ok, Tiny};
use serde_json::{json, Value};
use switchyard::GgmlType;

/// A greedy /completion request. The prompt is recomputed every time (`cache_prompt` false):
/// a cache hit evaluates fewer tokens per batch, which changes the low bits of the logits.
fn completion(model: Option<&str>, prompt: &str) -> Value {
    let mut req = json!({"prompt": prompt, "n_predict": 12, "temperature": 0.0, "n_probs": 3, "cache_prompt": false});
    if let Some(m) = model {
        req["model"] = json!(m);
    }
    req
}

/// The parts of a /completion answer that must match: text and per-token top probabilities.
fn answer(v: &Value) -> (Value, Value) {
    (v["content"].clone(), v["completion_probabilities"].clone())
}

/// A batch shared with other requests changes the low bits of the logits against a request
/// served alone (stock llama.cpp's kernels sum in another order for another batch size), so a
/// greedy choice between two tokens of nearly equal probability may flip, after which the texts
/// go their own ways. Accept `answer` when its tokens are the reference's (`reference`: its
/// completion_probabilities) or first differ where the reference's probabilities of the two
/// tokens are within 10% of each other; anything else (another expert's tokens) is an error.
fn same_tokens_up_to_a_near_tie(answer: &Value, reference: &Value) -> Result<(), String> {
    let got = answer["completion_probabilities"].as_array().ok_or("no completion_probabilities")?;
    let want = reference.as_array().ok_or("no reference probabilities")?;
    for (i, (g, w)) in got.iter().zip(want).enumerate() {
        if !g["id"].is_i64() || !w["id"].is_i64() {
            return Err(format!("token {i}: no token id in {g} or {w}"));
        }
        if g["id"] == w["id"] {
            continue;
        }
        let top = w["top_logprobs"].as_array().ok_or_else(|| format!("token {i}: no top_logprobs in {w}"))?;
        let lp = |id: &Value| top.iter().find(|t| t["id"] == *id).and_then(|t| t["logprob"].as_f64());
        return match (lp(&w["id"]), lp(&g["id"])) {
            (Some(a), Some(b)) if (a - b).abs() < 0.1 => Ok(()),
            _ => {
                Err(format!("token {i}: {} where the reference has {} (no near tie: {top:?})", g["token"], w["token"]))
            }
        };
    }
    if got.len() == want.len() {
        Ok(())
    } else {
        Err(format!("{} tokens, the reference {}", got.len(), want.len()))
    }
}

/// Pack `experts` (name, Hugging Face folder) over `base_gguf` into `dir/bundle.gguf`, with
/// `switchyard pack` arguments `extra`.
fn pack(
    dir: &Path,
    base_gguf: &Path,
    base_hf: &Path,
    experts: &[(String, std::path::PathBuf)],
    extra: &[&str],
) -> std::path::PathBuf {
    let bundle = dir.join("bundle.gguf");
    sy_ok(&common::pack_args(base_gguf, base_hf, experts, extra, &bundle));
    bundle
}

#[test]
fn server_answers_each_expert_exactly_as_when_serving_it_alone() {
    let (Some(smol), Some(bin)) = (common::smollm2(), common::llama_patched_bin()) else { return };
    let tiny = Tiny::new(GgmlType::Q8_0, Some(&smol));
    let bundle = pack(tiny.dir.path(), &tiny.base_gguf, &tiny.base_hf, &tiny.experts, &[]);
    check_server(&bin, &bundle);
}

/// The same on the real SmolLM2-135M-Instruct (Q4_1) with two synthetic experts, their deltas
/// mostly of low rank and packed as factors (`pack --rank 64`: every weight factored, so mixed
/// batches take each token's factors through two stacked products).
#[test]
fn server_answers_on_smollm2_as_when_serving_each_expert_alone() {
    let (Some(smol), Some(bin)) = (common::smollm2(), common::llama_patched_bin()) else { return };
    smollm2_server("low-rank", &["--rank", "64"], &smol, &bin);
}

/// The same with the codec's deltas (`pack --rank 0`: Q4_0/Q2_K codes and salient channels).
#[test]
fn server_answers_on_smollm2_with_codec_deltas_as_when_serving_each_expert_alone() {
    let (Some(smol), Some(bin)) = (common::smollm2(), common::llama_patched_bin()) else { return };
    smollm2_server("structured", &["--rank", "0"], &smol, &bin);
}

/// Two synthetic experts of SmolLM2 (`synth expert --kind KIND`), packed with `pack_args`, served.
fn smollm2_server(kind: &str, pack_args: &[&str], smol: &Path, bin: &Path) {
    let dir = tempfile::tempdir().unwrap();
    let base_hf = dir.path().join("base-hf");
    sy_ok(&["to-hf", smol.to_str().unwrap(), "-o", base_hf.to_str().unwrap()]);
    let base = base_hf.to_str().unwrap();
    let experts: Vec<(String, std::path::PathBuf)> = [("math", "1"), ("code", "2")]
        .iter()
        .map(|(n, seed)| {
            let d = dir.path().join(n);
            sy_ok(&["synth", "expert", "--base", base, "--kind", kind, "--seed", seed, "-o", d.to_str().unwrap()]);
            (n.to_string(), d)
        })
        .collect();
    let bundle = pack(dir.path(), smol, &base_hf, &experts, pack_args);
    // every linear weight factored, or none
    let listing = sy_ok(&["inspect", "--no-verify", bundle.to_str().unwrap()]);
    let kinds: Vec<&str> = listing
        .lines()
        .filter(|l| l.trim_start().starts_with("blk."))
        .filter_map(|l| l.split_whitespace().nth(1))
        .collect();
    let n_low_rank = kinds.iter().filter(|k| **k == "lowrank").count();
    let n_codec = kinds.iter().filter(|k| **k == "codec").count();
    let want_low_rank = pack_args != ["--rank", "0"];
    assert!(if want_low_rank { n_low_rank > 0 && n_codec == 0 } else { n_low_rank == 0 && n_codec > 0 }, "{listing}");
    // The Hugging Face folders are no longer needed: free the disk before serving.
    for d in std::iter::once(&base_hf).chain(experts.iter().map(|(_, d)| d)) {
        std::fs::remove_dir_all(d).unwrap();
    }
    check_server(bin, &bundle);
}

/// Serve `bundle` (experts math and code) and check every answer against the same build
/// serving the bundle with that expert alone.
fn check_server(bin: &Path, bundle: &Path) {
    let bin = bin.to_path_buf();
    let bundle = bundle.to_path_buf();
    let prompts = ["The three primary colors are", "def fibonacci(n):"];

    // References: one server per expert, one slot, the expert chosen at start.
    let mut reference = std::collections::HashMap::new();
    for e in ["math", "code", "base"] {
        let server = Server::start_with(&bin, &bundle, 1, &["--expert", e]);
        for p in prompts {
            let (status, v) = server.post("/completion", completion(None, p));
            assert_eq!(status, 200, "{v}");
            reference.insert((e, p), answer(&v));
        }
        let (_, v) = server.post("/v1/completions", json!({"prompt": prompts[0], "max_tokens": 8, "temperature": 0.0}));
        reference.insert((e, "oai"), (v["choices"][0]["text"].clone(), Value::Null));
    }
    assert_ne!(reference[&("math", prompts[0])], reference[&("code", prompts[0])], "experts must differ");

    let server = Server::start(&bin, &bundle, 2);
    let (status, models) = server.request("GET", "/v1/models", None).unwrap();
    assert_eq!(status, 200);
    let ids: Vec<&str> = models["data"].as_array().unwrap().iter().map(|m| m["id"].as_str().unwrap()).collect();
    assert_eq!(ids, ["base", "math", "code"]);

    // In sequence, switching back and forth.
    for e in ["math", "code", "math", "base", "code", "math"] {
        for p in prompts {
            let (status, v) = server.post("/completion", completion(Some(e), p));
            assert_eq!(status, 200, "{v}");
            assert_eq!(answer(&v), reference[&(e, p)], "expert {e}, prompt {p:?}");
            assert_eq!(v["model"], json!(e), "the response names the expert that served it");
        }
    }
    // No model: the default expert (base).
    assert_eq!(answer(&server.post("/completion", completion(None, prompts[0])).1), reference[&("base", prompts[0])]);
    // The OpenAI endpoint.
    let (status, v) = server
        .post("/v1/completions", json!({"model": "code", "prompt": prompts[0], "max_tokens": 8, "temperature": 0.0}));
    assert_eq!(status, 200, "{v}");
    assert_eq!(v["model"], json!("code"));
    assert_eq!(v["choices"][0]["text"], reference[&("code", "oai")].0);
    // Unknown names are refused, listing the valid ones.
    let (status, v) = server.post("/completion", completion(Some("poetry"), prompts[0]));
    assert_eq!(status, 400, "{v}");
    let msg = v["error"]["message"].as_str().unwrap_or_default();
    assert!(msg.contains("poetry") && msg.contains("base, math, code"), "{v}");

    // One slot with prompt caching on: the slot's KV and llama-server's RAM prompt cache (which
    // keeps the prompt a slot moves away from) are keyed by expert. A prompt computed by one
    // expert is never reused for another (math's KV under code's prompt would change code's
    // answer); each expert gets its own back from the RAM cache.
    let single = Server::start(&bin, &bundle, 1);
    for (round, e) in ["math", "code", "math", "code"].into_iter().enumerate() {
        let mut req = completion(Some(e), prompts[0]);
        req["cache_prompt"] = json!(true);
        let (status, v) = single.post("/completion", req);
        assert_eq!(status, 200, "{v}");
        let cached = v["timings"]["cache_n"].as_i64().unwrap_or_else(|| panic!("no timings.cache_n in {v}"));
        if round < 2 {
            assert_eq!(cached, 0, "expert {e} reused {cached} prompt tokens computed by another expert");
            assert_eq!(answer(&v), reference[&(e, prompts[0])], "cached slot, expert {e}");
        } else {
            assert!(cached > 0, "expert {e}: its own prompt was not reused from the prompt cache");
            // a cache hit evaluates fewer tokens per batch: the near-tie rule
            if let Err(why) = same_tokens_up_to_a_near_tie(&v, &reference[&(e, prompts[0])].1) {
                panic!("expert {e} from the prompt cache: {why}");
            }
        }
    }
    drop(single);

    // /slots save and restore carry the expert: math's prompt, saved and restored into the slot
    // while it serves code, is never reused by code, and is by math.
    let slot_files = tempfile::tempdir().unwrap();
    let single = Server::start_with(&bin, &bundle, 1, &["--slot-save-path", slot_files.path().to_str().unwrap()]);
    let cached = |e: &str| {
        let mut req = completion(Some(e), prompts[0]);
        req["cache_prompt"] = json!(true);
        let (status, v) = single.post("/completion", req);
        assert_eq!(status, 200, "{v}");
        (v["timings"]["cache_n"].as_i64().unwrap(), v)
    };
    let slot_action = |action: &str| {
        let (status, v) = single.post(&format!("/slots/0?action={action}"), json!({"filename": "math.bin"}));
        assert_eq!(status, 200, "{action}: {v}");
    };
    cached("math");
    slot_action("save");
    cached("code");
    slot_action("restore");
    let (n, v) = cached("code");
    assert_eq!(n, 0, "code reused {n} tokens of math's restored prompt");
    assert_eq!(answer(&v), reference[&("code", prompts[0])], "code after math's prompt was restored");
    slot_action("restore");
    assert!(cached("math").0 > 0, "math did not reuse its own restored prompt");
    drop(single);

    // Concurrent requests for different experts, which share batches (each token's products
    // take its own slot's expert), each get their expert's tokens, up to a near tie (see
    // same_tokens_up_to_a_near_tie).
    let log = bundle.with_extension("server.log");
    let server = Server::start_logged(&bin, &bundle, 3, &["--verbose"], &log);
    std::thread::scope(|s| {
        let workers: Vec<_> = ["base", "math", "code"]
            .into_iter()
            .enumerate()
            .map(|(i, e)| {
                let server = &server;
                let reference = &reference;
                s.spawn(move || {
                    for round in 0..4 {
                        let p = prompts[(i + round) % 2];
                        let (status, v) = server.post("/completion", completion(Some(e), p));
                        assert_eq!(status, 200, "{v}");
                        if let Err(why) = same_tokens_up_to_a_near_tie(&v, &reference[&(e, p)].1) {
                            panic!("concurrent: expert {e}, prompt {p:?}: {why}");
                        }
                    }
                })
            })
            .collect();
        workers.into_iter().for_each(|w| w.join().unwrap());
    });
    drop(server);
    // and they did share batches
    let log = std::fs::read_to_string(&log).unwrap();
    let tail: Vec<&str> = log.lines().rev().take(40).collect();
    assert!(log.contains("mixes 2 experts"), "no batch mixed experts; the log ends:\n{}", tail.join("\n"));
}

/// llama-server's router mode (`--models-dir`, one child server per model, started on demand):
/// a bundle in the directory lists its experts as models beside it, and a request naming an
/// expert reaches the bundle's server, which answers with that expert exactly as a server
/// started for it alone; the bundle's own name serves its base, and a plain model beside it
/// still serves.
#[test]
fn router_mode_lists_a_bundles_experts_and_reaches_each_by_name() {
    let (Some(smol), Some(bin)) = (common::smollm2(), common::llama_patched_bin()) else { return };
    let tiny = Tiny::new(GgmlType::Q8_0, Some(&smol));
    let models = tiny.dir.path().join("models");
    std::fs::create_dir(&models).unwrap();
    let bundle = pack(&models, &tiny.base_gguf, &tiny.base_hf, &tiny.experts, &[]);
    std::fs::copy(&tiny.base_gguf, models.join("plain.gguf")).unwrap();
    let prompt = "The three primary colors are";

    let mut reference = std::collections::HashMap::new();
    for e in ["math", "code", "base"] {
        let server = Server::start_with(&bin, &bundle, 1, &["--expert", e]);
        let (status, v) = server.post("/completion", completion(None, prompt));
        assert_eq!(status, 200, "{v}");
        reference.insert(e, answer(&v));
    }
    assert_ne!(reference["math"], reference["code"], "experts must differ");

    let log = tiny.path("router.log");
    let router = Server::start_router(&bin, &models, 1, &["--models-max", "1"], &log);
    let log_tail = || {
        let text = std::fs::read_to_string(&log).unwrap_or_default();
        text.lines().rev().take(30).collect::<Vec<_>>().into_iter().rev().collect::<Vec<_>>().join("\n")
    };
    let (status, listed) = router.request("GET", "/v1/models", None).unwrap();
    assert_eq!(status, 200, "{listed}");
    let entries = listed["data"].as_array().unwrap();
    let ids: Vec<&str> = entries.iter().filter_map(|m| m["id"].as_str()).collect();
    for id in ["bundle", "math", "code", "plain"] {
        assert!(ids.contains(&id), "/v1/models lacks {id}: {ids:?}");
    }
    let math = entries.iter().find(|m| m["id"] == "math").unwrap();
    assert_eq!(math["bundle"], json!("bundle"), "{math}");

    for (name, expert) in [("math", "math"), ("code", "code"), ("bundle", "base"), ("math", "math")] {
        let (status, v) = router.post("/completion", completion(Some(name), prompt));
        assert_eq!(status, 200, "model {name}: {v}\nrouter log:\n{}", log_tail());
        assert_eq!(answer(&v), reference[expert], "model {name} through the router");
        if name != "bundle" {
            assert_eq!(v["model"], json!(name), "the response names the expert that served it");
        }
    }
    let (status, v) = router.post("/completion", completion(Some("plain"), prompt));
    assert_eq!(status, 200, "plain model beside the bundle: {v}");
    let (status, v) = router.post("/completion", completion(Some("poetry"), prompt));
    assert_ne!(status, 200, "an unknown model must be refused: {v}");
}
