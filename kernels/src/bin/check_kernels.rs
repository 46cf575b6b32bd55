//! Compiles every kernel for the given architectures without a GPU: NVRTC (the same call the
//! runtime makes) to PTX, then ptxas to machine code, reporting registers and spills.
//!
//!   switchyard-check-kernels --ptxas PATH [--arch 80 --arch 90 ...] [--keep DIR]
//!
//! Prints one line per kernel and architecture, then `N kernels compiled`; exits non-zero when
//! a kernel fails to compile or is missing from the output.

use std::path::PathBuf;
use std::process::{Command, ExitCode};

use switchyard_kernels::compile::compile_ptx;
use switchyard_kernels::KERNELS;

struct Usage {
    ptxas: PathBuf,
    archs: Vec<String>,
    keep: Option<PathBuf>,
}

fn parse() -> Result<Usage, String> {
    let mut args = std::env::args().skip(1);
    let (mut ptxas, mut archs, mut keep) = (None, Vec::new(), None);
    while let Some(a) = args.next() {
        let mut value = || args.next().ok_or(format!("{a} needs a value"));
        match a.as_str() {
            "--ptxas" => ptxas = Some(PathBuf::from(value()?)),
            "--arch" => archs.push(value()?),
            "--keep" => keep = Some(PathBuf::from(value()?)),
            _ => return Err(format!("unknown argument '{a}'")),
        }
    }
    if archs.is_empty() {
        archs = vec!["80".into(), "90".into()];
    }
    Ok(Usage { ptxas: ptxas.ok_or("--ptxas PATH is required")?, archs, keep })
}

/// ptxas -v's report: (kernel, registers, spill store bytes, spill load bytes).
fn ptxas_report(text: &str) -> Vec<(String, u32, u32, u32)> {
    let mut out = Vec::new();
    let mut current: Option<(String, u32, u32)> = None;
    for line in text.lines() {
        if let Some(rest) = line.split("Function properties for ").nth(1) {
            current = Some((rest.trim().to_string(), 0, 0));
        } else if line.contains("spill stores") {
            let n: Vec<u32> = line.split_whitespace().filter_map(|w| w.parse().ok()).collect();
            if let (Some(c), [_, stores, loads]) = (current.as_mut(), n.as_slice()) {
                (c.1, c.2) = (*stores, *loads);
            }
        } else if let Some(rest) = line.split("Used ").nth(1) {
            let regs = rest.split_whitespace().next().and_then(|w| w.parse().ok()).unwrap_or(0);
            if let Some((name, stores, loads)) = current.take() {
                out.push((name, regs, stores, loads));
            }
        }
    }
    out
}

fn run(u: &Usage) -> Result<usize, String> {
    let dir = match &u.keep {
        Some(d) => d.clone(),
        None => std::env::temp_dir().join(format!("switchyard-kernels-{}", std::process::id())),
    };
    std::fs::create_dir_all(&dir).map_err(|e| format!("{}: {e}", dir.display()))?;
    let mut compiled = 0;
    for arch in &u.archs {
        // NVRTC wants a 'static name; the handful of architectures leak a few bytes once
        let compute: &'static str = Box::leak(format!("compute_{arch}").into_boxed_str());
        let ptx = compile_ptx(compute).map_err(|e| e.to_string())?;
        let ptx_path = dir.join(format!("switchyard.sm_{arch}.ptx"));
        std::fs::write(&ptx_path, ptx.to_src()).map_err(|e| format!("{}: {e}", ptx_path.display()))?;
        let out = Command::new(&u.ptxas)
            .arg(format!("-arch=sm_{arch}"))
            .arg("-v")
            .arg(&ptx_path)
            .arg("-o")
            .arg(dir.join(format!("switchyard.sm_{arch}.cubin")))
            .output()
            .map_err(|e| format!("cannot run {}: {e}", u.ptxas.display()))?;
        let text = String::from_utf8_lossy(&out.stderr).into_owned() + &String::from_utf8_lossy(&out.stdout);
        if !out.status.success() {
            return Err(format!("ptxas for sm_{arch} failed:\n{text}"));
        }
        let report = ptxas_report(&text);
        for &k in KERNELS {
            let Some((_, regs, stores, loads)) = report.iter().find(|r| r.0 == k) else {
                return Err(format!("kernel {k} is missing from ptxas's output for sm_{arch}:\n{text}"));
            };
            println!("{k:<24} sm_{arch}  registers {regs:>3}  spill stores {stores:>4} B  spill loads {loads:>4} B");
            compiled += 1;
        }
    }
    if u.keep.is_none() {
        let _ = std::fs::remove_dir_all(&dir);
    }
    Ok(compiled)
}

fn main() -> ExitCode {
    let result = parse().and_then(|u| run(&u));
    match result {
        Ok(n) => {
            println!("{n} kernels compiled");
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("switchyard-check-kernels: {e}");
            ExitCode::FAILURE
        }
    }
}
