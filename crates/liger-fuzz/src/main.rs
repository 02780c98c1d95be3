//! `liger-fuzz`: mutation fuzzing of every reader of untrusted input, on stable Rust.
//!
//!     liger-fuzz [TARGET|all] [--seconds S] [--runs N] [--seed X] [--corpus DIR] [--crashes DIR]
//!     liger-fuzz --write-seeds DIR
//!     liger-fuzz --replay TARGET FILE
//!
//! Each execution mutates a seed of the target's format (from `--corpus DIR/<target>/`, the
//! committed corpus, or built in) and feeds it to the reader. Any error the reader returns is
//! a correct answer; a panic is a crash (its input is saved to `--crashes`), an execution
//! longer than 10 s is a hang (the input is saved, the run stops), and an abort (such as an
//! allocation that cannot be met) ends the run with a non-zero status: rerunning with the
//! printed seed repeats the same inputs. Targets: see `targets.rs`.

mod mutate;
mod targets;

use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use targets::{Target, TARGETS};

const HANG: Duration = Duration::from_secs(10);

struct Options {
    targets: Vec<&'static Target>,
    seconds: f64,
    runs: u64,
    seed: u64,
    corpus: Option<PathBuf>,
    crashes: PathBuf,
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    if let Some(i) = args.iter().position(|a| a == "--write-seeds") {
        let dir = PathBuf::from(args.get(i + 1).expect("--write-seeds DIR"));
        write_seeds(&dir);
        return;
    }
    if args.first().map(String::as_str) == Some("--replay") {
        // Runs one saved input with the normal panic message, to see where it fails.
        let (name, file) = (args.get(1).expect("--replay TARGET FILE"), args.get(2).expect("--replay TARGET FILE"));
        let target = TARGETS.iter().find(|t| t.name == name).expect("a known target");
        (target.run)(&std::fs::read(file).expect("a readable input"));
        println!("{name}: {file} ran without a panic");
        return;
    }
    let options = match parse(&args) {
        Ok(o) => o,
        Err(why) => {
            eprintln!("liger-fuzz: {why}\nusage: liger-fuzz [TARGET|all] [--seconds S] [--runs N] [--seed X] [--corpus DIR] [--crashes DIR]");
            std::process::exit(2);
        }
    };
    // Panics are counted and their inputs saved; their messages would only flood the output.
    std::panic::set_hook(Box::new(|_| {}));
    let (mut passed, mut failed) = (0, 0);
    for target in &options.targets {
        let crashes = fuzz(target, &options);
        if crashes == 0 {
            passed += 1
        } else {
            failed += 1
        }
    }
    println!("{passed} passed, {failed} failed");
    if failed > 0 {
        std::process::exit(1);
    }
}

fn parse(args: &[String]) -> Result<Options, String> {
    let mut o = Options {
        targets: Vec::new(),
        seconds: 10.0,
        runs: u64::MAX,
        seed: rand::random(),
        corpus: None,
        crashes: std::env::temp_dir().join("liger-fuzz-crashes"),
    };
    let mut it = args.iter();
    while let Some(a) = it.next() {
        let mut value = |name: &str| it.next().cloned().ok_or(format!("{name} needs a value"));
        match a.as_str() {
            "--seconds" => o.seconds = value("--seconds")?.parse().map_err(|_| "--seconds takes a number")?,
            "--runs" => o.runs = value("--runs")?.parse().map_err(|_| "--runs takes a whole number")?,
            "--seed" => o.seed = value("--seed")?.parse().map_err(|_| "--seed takes a whole number")?,
            "--corpus" => o.corpus = Some(PathBuf::from(value("--corpus")?)),
            "--crashes" => o.crashes = PathBuf::from(value("--crashes")?),
            "all" => o.targets.extend(TARGETS.iter()),
            name => o.targets.push(
                TARGETS
                    .iter()
                    .find(|t| t.name == name)
                    .ok_or(format!("unknown target {name}; known: all, {}", TARGETS.map(|t| t.name).join(", ")))?,
            ),
        }
    }
    if o.targets.is_empty() {
        o.targets.extend(TARGETS.iter());
    }
    Ok(o)
}

/// The seeds of `target`: the files of its corpus folder when there are any, else built in.
fn seeds(target: &Target, corpus: Option<&Path>) -> Vec<Vec<u8>> {
    let from_disk: Vec<Vec<u8>> = corpus
        .map(|c| c.join(target.name))
        .and_then(|dir| std::fs::read_dir(dir).ok())
        .map(|entries| entries.flatten().filter_map(|e| std::fs::read(e.path()).ok()).collect())
        .unwrap_or_default();
    if from_disk.is_empty() {
        (target.seeds)()
    } else {
        from_disk
    }
}

/// Runs one target until its time or run budget is spent; returns the number of crashes.
fn fuzz(target: &Target, o: &Options) -> u64 {
    let seeds = seeds(target, o.corpus.as_deref());
    let mut rng = SmallRng::seed_from_u64(o.seed ^ fxhash(target.name.as_bytes()));
    let current = Arc::new(Mutex::new(Vec::new()));
    let started_at = Arc::new(AtomicU64::new(0));
    let clock = Instant::now();
    let watchdog = spawn_watchdog(target.name, o.crashes.clone(), current.clone(), started_at.clone(), clock);
    // Every seed as it is first, then mutations.
    let (mut runs, mut crashes) = (0u64, 0u64);
    while runs < o.runs && (runs < seeds.len() as u64 || clock.elapsed().as_secs_f64() < o.seconds) {
        let input = match seeds.get(runs as usize) {
            Some(seed) => seed.clone(),
            None => {
                let seed = &seeds[rng.random_range(0..seeds.len())];
                let other = &seeds[rng.random_range(0..seeds.len())];
                mutate::mutate(seed, other, &mut rng)
            }
        };
        current.lock().unwrap().clone_from(&input);
        started_at.store(clock.elapsed().as_millis() as u64 + 1, Ordering::SeqCst);
        let outcome = std::panic::catch_unwind(|| (target.run)(&input));
        started_at.store(0, Ordering::SeqCst);
        if outcome.is_err() {
            crashes += 1;
            let path = save(&o.crashes, target.name, "crash", &input);
            eprintln!("{}: panic on input saved to {}", target.name, path.display());
        }
        runs += 1;
    }
    drop(watchdog);
    let secs = clock.elapsed().as_secs_f64();
    println!(
        "{}: {runs} executions in {secs:.1} s ({:.0}/s), {crashes} crashes, 0 hangs, {} seeds, seed {}",
        target.name,
        runs as f64 / secs.max(1e-9),
        seeds.len(),
        o.seed
    );
    crashes
}

/// A thread that ends the process when one execution runs past [`HANG`], saving its input.
fn spawn_watchdog(
    name: &'static str,
    dir: PathBuf,
    current: Arc<Mutex<Vec<u8>>>,
    started_at: Arc<AtomicU64>,
    clock: Instant,
) -> WatchdogGuard {
    let stop = Arc::new(AtomicU64::new(0));
    let flag = stop.clone();
    std::thread::spawn(move || {
        while flag.load(Ordering::SeqCst) == 0 {
            std::thread::sleep(Duration::from_millis(200));
            let start = started_at.load(Ordering::SeqCst);
            if start > 0 && clock.elapsed().as_millis() as u64 + 1 - start > HANG.as_millis() as u64 {
                let input = current.lock().map(|c| c.clone()).unwrap_or_default();
                let path = save(&dir, name, "hang", &input);
                eprintln!("{name}: an execution ran past {HANG:?}; input saved to {}", path.display());
                println!("0 passed, 1 failed");
                std::process::exit(3);
            }
        }
    });
    WatchdogGuard(stop)
}

struct WatchdogGuard(Arc<AtomicU64>);
impl Drop for WatchdogGuard {
    fn drop(&mut self) {
        self.0.store(1, Ordering::SeqCst);
    }
}

fn save(dir: &Path, target: &str, kind: &str, input: &[u8]) -> PathBuf {
    let _ = std::fs::create_dir_all(dir);
    let path = dir.join(format!("{target}-{kind}-{:016x}", fxhash(input)));
    let _ = std::fs::write(&path, input);
    path
}

/// A small, stable hash (FNV-1a) for file names and per-target seeds.
fn fxhash(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325u64, |h, &b| (h ^ b as u64).wrapping_mul(0x100_0000_01b3))
}

fn write_seeds(dir: &Path) {
    for t in &TARGETS {
        let sub = dir.join(t.name);
        std::fs::create_dir_all(&sub).expect("a writable corpus folder");
        for (i, seed) in (t.seeds)().iter().enumerate() {
            std::fs::write(sub.join(format!("seed-{i}")), seed).expect("a writable corpus folder");
        }
    }
    println!("wrote the seeds of {} targets to {}", TARGETS.len(), dir.display());
}
