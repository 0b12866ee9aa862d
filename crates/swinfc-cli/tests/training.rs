//! Training with real worker processes on CPU: determinism, 1-worker ≡ N-worker, exact resume,
//! fallback past a torn checkpoint, and config errors. Multi-worker runs go through
//! `swinfc-launch`.

mod common;

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use common::read_tensors;

const CONFIG: &str = "
run: {name: tiny, dir: RUN_DIR, seed: 5}
model: {preset: tiny, img_size: 32, embed_dim: 16, branch_dim: 32, ea_memory: 4, num_classes: 4}
data: {dataset: synthetic, classes: 4, train_per_class: 6, test_per_class: 3, img_size: 40, resize: 36, crop: 32, num_threads: 1}
train: {global_batch: 8, micro_batch: 4, total_steps: 6, warmup_steps: 1, lr_backbone: 0.01, lr_new: 0.05, grad_clip: 1.0, weight_decay: 0.0001}
eval: {every_steps: 3}
checkpoint: {every_steps: 3, keep_last: 5}
metrics: {listen: '127.0.0.1:0'}
";

/// A config file whose run directory is `dir/run`.
fn config(dir: &Path) -> PathBuf {
    let path = dir.join("config.yaml");
    std::fs::write(
        &path,
        CONFIG.replace("RUN_DIR", dir.join("run").to_str().unwrap()),
    )
    .unwrap();
    path
}

fn swinfc(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_swinfc"))
        .args(args)
        .env("RAYON_NUM_THREADS", "1")
        .output()
        .unwrap()
}

/// Asserts that `out` is a failed run (exit 1) whose stderr contains each of `wants`; its stderr.
fn fails_with(out: &Output, wants: &[&str]) -> String {
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    for want in wants {
        assert!(stderr.contains(want), "want `{want}` in:\n{stderr}");
    }
    stderr
}

fn train_local(config: &Path, extra: &[&str]) {
    let mut args = vec!["train", config.to_str().unwrap()];
    args.extend_from_slice(extra);
    let out = swinfc(&args);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
}

/// Runs `world` `swinfc worker` processes through the launcher.
fn train_workers(config: &Path, world: usize, extra: &[&str]) {
    let out = Command::new(env!("CARGO_BIN_EXE_swinfc-launch"))
        .args(["--cpu", &world.to_string()])
        .arg(config)
        .args(extra)
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
}

fn weights(dir: &Path, step: u64) -> std::collections::BTreeMap<String, common::Loaded> {
    read_tensors(&dir.join(format!("run/checkpoints/step-{step:08}/model.safetensors")))
}

fn model_bytes(dir: &Path, step: u64) -> Vec<u8> {
    std::fs::read(dir.join(format!("run/checkpoints/step-{step:08}/model.safetensors"))).unwrap()
}

/// Largest relative difference over all parameters.
fn max_relative_difference(a: &Path, b: &Path, step: u64) -> f64 {
    let (a, b) = (weights(a, step), weights(b, step));
    assert_eq!(a.keys().collect::<Vec<_>>(), b.keys().collect::<Vec<_>>());
    a.iter()
        .map(|(k, t)| common::relative_error(&t.values, &b[k].values, 1e-6))
        .fold(0.0, f64::max)
}

#[test]
fn the_same_run_twice_gives_bit_identical_weights() {
    let (a, b) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    train_local(&config(a.path()), &[]);
    train_local(&config(b.path()), &[]);
    assert_eq!(model_bytes(a.path(), 6), model_bytes(b.path(), 6));
    assert_eq!(model_bytes(a.path(), 3), model_bytes(b.path(), 3));
}

#[test]
fn resume_from_a_checkpoint_is_bit_identical_to_the_uninterrupted_run() {
    let (full, resumed) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    train_local(&config(full.path()), &[]);
    let step3 = full.path().join("run/checkpoints/step-00000003");
    train_local(&config(resumed.path()), &["--resume", step3.to_str().unwrap()]);
    assert_eq!(model_bytes(full.path(), 6), model_bytes(resumed.path(), 6));
    let optimizer =
        |d: &Path| std::fs::read(d.join("run/checkpoints/step-00000006/optimizer.safetensors")).unwrap();
    assert_eq!(optimizer(full.path()), optimizer(resumed.path()));
}

#[test]
fn resume_auto_skips_a_torn_checkpoint() {
    let (full, torn) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    train_local(&config(full.path()), &[]);
    // A run stopped after its step-6 save was torn: training 3..6 again reproduces step 6.
    train_local(&config(torn.path()), &["--set", "train.total_steps=6"]);
    let model = torn
        .path()
        .join("run/checkpoints/step-00000006/model.safetensors");
    let len = std::fs::metadata(&model).unwrap().len();
    std::fs::OpenOptions::new()
        .write(true)
        .open(&model)
        .unwrap()
        .set_len(len / 2)
        .unwrap();
    let out = swinfc(&["train", config(torn.path()).to_str().unwrap(), "--resume", "auto"]);
    let log = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{log}");
    assert!(log.contains("does not verify"), "{log}");
    assert_eq!(model_bytes(full.path(), 6), model_bytes(torn.path(), 6));
}

/// Two workers with 1 and with 2 threads each, each twice: the same bits. At 128² and embed 32 the
/// stage-1 gemms pass Flex's threshold for splitting across threads (192³ multiply-adds), and the
/// fused kernels split by rows at any size.
#[test]
fn two_workers_give_bit_identical_weights_with_one_and_with_two_threads_each() {
    let run = |threads: &str| {
        let dir = tempfile::tempdir().unwrap();
        let config = config(dir.path());
        let wider = [
            "--set",
            "model.img_size=128",
            "--set",
            "model.embed_dim=32",
            "--set",
            "data.crop=128",
            "--set",
            "data.resize=136",
            "--set",
            "data.img_size=144",
            "--set",
            "train.total_steps=3",
            "--threads-per-worker",
            threads,
        ];
        train_workers(&config, 2, &wider);
        (model_bytes(dir.path(), 3), dir)
    };
    let ((one_a, _a), (one_b, _b)) = (run("1"), run("1"));
    assert!(one_a == one_b, "1 thread per worker: two runs differ");
    let ((two_a, _c), (two_b, _d)) = (run("2"), run("2"));
    assert!(two_a == two_b, "2 threads per worker: two runs differ");
    assert!(one_a == two_a, "1 and 2 threads per worker differ");
}

#[test]
fn two_workers_equal_one_worker_with_gradient_accumulation() {
    let (one, two) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    train_local(&config(one.path()), &[]); // world 1: grad_accum 2 × micro 4
    train_workers(&config(two.path()), 2, &[]); // world 2: grad_accum 1 × micro 4
    let diff = max_relative_difference(one.path(), two.path(), 6);
    assert!(diff <= 1e-5, "relative difference {diff:.3e}");
}

#[test]
fn a_two_worker_run_resumes_on_one_worker() {
    let (two, resumed) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    train_workers(&config(two.path()), 2, &[]);
    let step3 = two.path().join("run/checkpoints/step-00000003");
    train_local(&config(resumed.path()), &["--resume", step3.to_str().unwrap()]);
    let diff = max_relative_difference(two.path(), resumed.path(), 6);
    assert!(diff <= 1e-5, "relative difference {diff:.3e}");
}

#[test]
fn config_errors_exit_1_naming_the_key_or_path() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = config(dir.path());
    let mut cases: Vec<(&[&str], &str)> = vec![
        (&["--set", "train.lr_nwe=1"], "train.lr_nwe: unknown key"),
        (
            &["--set", "train.micro_batch=3"],
            "train.global_batch: 8 is not a multiple of train.micro_batch 3",
        ),
        (
            &[
                "--set",
                "data={dataset: cub, root: /nonexistent/cub, resize: 36, crop: 32}",
            ],
            "/nonexistent/cub",
        ),
        (&["--set", "data.colour=1"], "data.colour"),
        (
            &["--set", "train.lr_new=.nan"],
            "train.lr_new: NaN must be a finite number ≥ 0",
        ),
        (
            &["--set", "train.lr_backbone=-0.1"],
            "train.lr_backbone: -0.1 must be a finite number ≥ 0",
        ),
        (
            &["--set", "train.momentum=1.5"],
            "train.momentum: 1.5 must be in [0, 1)",
        ),
        (
            &["--set", "data.crop=28"],
            "data.crop: 28 differs from model.img_size 32",
        ),
        (
            &["--set", "model.num_classes=3"],
            "model.num_classes: 3 is fewer than the dataset's 4 classes",
        ),
    ];
    // Without the `cuda` feature the CPU is the only backend, and it trains in fp32 only.
    if !cfg!(feature = "cuda") {
        cases.push((
            &["--set", "train.precision=bf16"],
            "train.precision: bf16 needs the CUDA backend",
        ));
    }
    for (extra, want) in cases {
        let mut args = vec!["train", cfg.to_str().unwrap()];
        args.extend_from_slice(extra);
        let out = swinfc(&args);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "{extra:?}: {stderr}");
        assert!(stderr.contains(want), "{extra:?}: want `{want}` in\n{stderr}");
    }
}

/// What a person reads from `swinfc train` (no `RUST_LOG`) is what the launcher shows: aligned
/// step lines every `metrics.log_every`, eval and save lines, the summary with the run's files;
/// run again, the finished run says so instead of training.
#[test]
fn swinfc_train_shows_steps_and_a_summary_and_a_rerun_says_the_run_is_complete() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = config(dir.path());
    let train = || {
        let out = Command::new(env!("CARGO_BIN_EXE_swinfc"))
            .args(["train", cfg.to_str().unwrap(), "--set", "metrics.log_every=2"])
            .env("RAYON_NUM_THREADS", "1")
            .env_remove("RUST_LOG")
            .output()
            .unwrap();
        let log = String::from_utf8_lossy(&out.stderr).into_owned();
        assert!(out.status.success(), "{log}");
        log
    };
    let log = train();
    let steps: Vec<&str> = log.lines().filter(|l| l.starts_with("step ")).collect();
    assert_eq!(steps.len(), 3, "steps 2, 4 and 6:\n{log}");
    assert!(steps[0].starts_with("step 2/6  loss "), "{log}");
    for field in ["loss", "grad_norm", "lr", "img/s"] {
        let columns: Vec<_> = steps.iter().map(|l| l.find(field)).collect();
        assert!(
            columns[0].is_some() && columns.iter().all(|c| *c == columns[0]),
            "{field}:\n{log}"
        );
    }
    assert!(log.lines().any(|l| l.starts_with("eval 3/6  top1 ")), "{log}");
    let checkpoint = dir.path().join("run/checkpoints/step-00000006");
    let save = format!("save 6/6  {}", checkpoint.display());
    assert!(log.lines().any(|l| l == save), "{log}");
    let run_dir = dir.path().join("run");
    for want in [
        "finished: step 6/6 (6 steps in ".to_string(),
        "  combined ".to_string(),
        format!("checkpoint  {}", checkpoint.display()),
        format!("eval --checkpoint {}", run_dir.display()),
    ] {
        assert!(log.contains(&want), "want `{want}` in the summary:\n{log}");
    }
    // A local run writes no events.jsonl, so the summary offers no plot of it.
    assert!(!log.contains("plot "), "{log}");

    let weights = model_bytes(dir.path(), 6);
    let log = train();
    let complete = format!("{} is complete: all 6 steps are done", run_dir.display());
    assert!(log.contains(&complete), "{log}");
    assert!(
        !log.lines().any(|l| l.starts_with("step ")),
        "nothing was trained:\n{log}"
    );
    assert_eq!(model_bytes(dir.path(), 6), weights);
}

/// Every error a user can cause with `swinfc` is one `swinfc: …` line naming the key or file,
/// then one line that says what to do.
#[test]
fn swinfc_errors_end_with_what_to_do() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = config(dir.path());
    let cfg = cfg.to_str().unwrap();
    let garbage = dir.path().join("garbage.pth");
    std::fs::write(&garbage, b"not a weights file").unwrap();
    let model_only = dir.path().join("model.yaml");
    std::fs::write(&model_only, "model: {preset: tiny}\n").unwrap();
    let empty = tempfile::tempdir().unwrap();
    let out_file = dir.path().join("out.safetensors");
    let cub = "data={dataset: cub, root: /nonexistent/cub, resize: 36, crop: 32}";
    let cases: [(&[&str], &str, &str); 6] = [
        (
            &["train", "/nonexistent/c.yaml"],
            "/nonexistent/c.yaml: ",
            "check the config's path",
        ),
        (
            &["train", cfg, "--set", "train.lr_nwe=1"],
            "train.lr_nwe: unknown key",
            "fix that key",
        ),
        (
            &["train", cfg, "--set", cub],
            "/nonexistent/cub",
            "check data.root",
        ),
        (
            &[
                "import-weights",
                garbage.to_str().unwrap(),
                "-o",
                out_file.to_str().unwrap(),
            ],
            "neither safetensors (",
            "pass an official Microsoft or timm",
        ),
        (
            &["eval", "--checkpoint", empty.path().to_str().unwrap()],
            "no checkpoint that verifies",
            "pass --checkpoint a step directory",
        ),
        (
            &["data", "check", model_only.to_str().unwrap()],
            "data: missing section",
            "fix that key",
        ),
    ];
    for (args, error, hint) in cases {
        let out = swinfc(args);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "{args:?}: {stderr}");
        let lines: Vec<&str> = stderr.lines().collect();
        let [.., message, next] = lines[..] else {
            panic!("{args:?}: two lines at least:\n{stderr}");
        };
        assert!(
            message.starts_with("swinfc: ") && message.contains(error),
            "{args:?}:\n{stderr}"
        );
        assert!(next.starts_with(hint), "{args:?}: want `{hint}…` last:\n{stderr}");
    }
}

/// `swinfc bench probe` on the CPU (its stand-in for a device) agrees with itself at every
/// stage and exits 0; asked for CUDA by a build without it, it says so and exits 1.
#[test]
fn bench_probe_compares_stage_by_stage() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("probe.yaml");
    std::fs::write(
        &cfg,
        "model: {preset: tiny, img_size: 32, embed_dim: 16, branch_dim: 32, ea_memory: 4, num_classes: 4}\ntrain: {micro_batch: 2}\n",
    )
    .unwrap();
    let cfg = cfg.to_str().unwrap();
    let out = swinfc(&["bench", "probe", "--config", cfg]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    for want in [
        "gradients from backward",
        "device: flat buffer against its own per-parameter gradients",
        "narrow(129,",
        "updated parameters",
        "every stage agrees within its tolerance",
    ] {
        assert!(stdout.contains(want), "want `{want}` in\n{stdout}");
    }
    let json = swinfc(&["bench", "probe", "--config", cfg, "--json"]);
    let report: serde_json::Value = serde_json::from_slice(&json.stdout).expect("one JSON object");
    assert!(
        report["stages"].as_array().is_some_and(|s| s.len() >= 10),
        "{report}"
    );
    if !cfg!(feature = "cuda") {
        fails_with(
            &swinfc(&["bench", "probe", "--config", cfg, "--backend", "cuda"]),
            &["built without the `cuda` feature"],
        );
    }
}

/// A 24-bit BMP of `side`×`side` pixels.
fn write_bmp(path: &Path, side: u32, rgb: [u8; 3]) {
    let row = (side * 3).div_ceil(4) * 4;
    let size = 54 + row * side;
    let mut b = Vec::with_capacity(size as usize);
    b.extend_from_slice(b"BM");
    for v in [size, 0, 54, 40] {
        b.extend_from_slice(&v.to_le_bytes());
    }
    b.extend_from_slice(&(side as i32).to_le_bytes());
    b.extend_from_slice(&(side as i32).to_le_bytes());
    b.extend_from_slice(&1u16.to_le_bytes());
    b.extend_from_slice(&24u16.to_le_bytes());
    for v in [0u32, row * side, 2835, 2835, 0, 0] {
        b.extend_from_slice(&v.to_le_bytes());
    }
    for _ in 0..side {
        for _ in 0..side {
            b.extend_from_slice(&[rgb[2], rgb[1], rgb[0]]);
        }
        b.resize(b.len() + (row - side * 3) as usize, 0);
    }
    std::fs::write(path, b).unwrap();
}

#[test]
fn eval_and_predict_work_on_a_checkpoint() {
    let dir = tempfile::tempdir().unwrap();
    train_local(&config(dir.path()), &[]);
    let run = dir.path().join("run");
    let out = swinfc(&["eval", "--checkpoint", run.to_str().unwrap()]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(stdout.contains("step-00000006"), "{stdout}");
    assert!(stdout.contains("samples    12"), "{stdout}"); // 4 classes × 3 test images
    for head in ["combined", "backbone", "stage2", "stage3", "stage4"] {
        assert!(stdout.contains(head), "{stdout}");
    }

    let image = dir.path().join("bird.bmp");
    write_bmp(&image, 50, [200, 120, 40]);
    let step3 = run.join("checkpoints/step-00000003");
    let out = swinfc(&[
        "predict",
        "--checkpoint",
        step3.to_str().unwrap(),
        image.to_str().unwrap(),
    ]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let probs: Vec<f64> = stdout
        .lines()
        .filter_map(|l| l.trim().split_once('%'))
        .map(|(p, _)| p.trim().parse().unwrap())
        .collect();
    assert_eq!(probs.len(), 4, "top-5 of 4 classes: {stdout}");
    assert!(probs.windows(2).all(|w| w[0] >= w[1]), "sorted: {stdout}");
    assert!((probs.iter().sum::<f64>() - 100.0).abs() < 0.1, "{stdout}");
}

/// A CUB_200_2011 layout under `root` with 2 classes of 3 train and 1 test BMPs each; the train
/// images listed in `unreadable` (indices 0..6) are empty files.
fn cub_with_unreadable(root: &Path, unreadable: &[usize]) {
    let d = root.join("CUB_200_2011");
    let (mut images, mut labels, mut split) = (String::new(), String::new(), String::new());
    for id in 1..=8usize {
        let class = 1 + (id - 1) / 4; // ids 1-4: class 1, 5-8: class 2
        let is_train = (id - 1) % 4 < 3;
        let name = format!("00{class}.Bird_{class}/bird_{id}.bmp");
        let path = d.join("images").join(&name);
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        let train_index = (class - 1) * 3 + (id - 1) % 4;
        if is_train && unreadable.contains(&train_index) {
            std::fs::write(&path, b"").unwrap();
        } else {
            let shade = (40 * id) as u8;
            write_bmp(&path, 40, [shade, 255 - shade, 60 * class as u8]);
        }
        images += &format!("{id} {name}\n");
        labels += &format!("{id} {class}\n");
        split += &format!("{id} {}\n", u8::from(is_train));
    }
    std::fs::write(d.join("images.txt"), images).unwrap();
    std::fs::write(d.join("image_class_labels.txt"), labels).unwrap();
    std::fs::write(d.join("train_test_split.txt"), split).unwrap();
    std::fs::write(d.join("classes.txt"), "1 001.Bird_1\n2 002.Bird_2\n").unwrap();
}

/// Writes the CUB layout above under `dir/cub` and returns the `--set` that trains on it.
fn cub_data(dir: &Path, unreadable: &[usize]) -> String {
    cub_with_unreadable(&dir.join("cub"), unreadable);
    format!(
        "data={{dataset: cub, root: {}, resize: 36, crop: 32, num_threads: 1}}",
        dir.join("cub").display()
    )
}

/// `swinfc-launch --cpu 2` of the test config on the CUB layout above, with `model.num_classes`.
fn launch_cub(dir: &Path, unreadable: &[usize], num_classes: usize) -> Output {
    let data = cub_data(dir, unreadable);
    Command::new(env!("CARGO_BIN_EXE_swinfc-launch"))
        .args(["--cpu", "2"])
        .arg(config(dir))
        .args([
            "--set",
            &data,
            "--set",
            &format!("model.num_classes={num_classes}"),
        ])
        .output()
        .unwrap()
}

/// Train 4 steps of micro-batch 1 (global batch 2) on the CUB layout above.
fn train_cub(dir: &Path, unreadable: &[usize]) -> Output {
    let data = cub_data(dir, unreadable);
    swinfc(&[
        "train",
        config(dir).to_str().unwrap(),
        "--set",
        &data,
        "--set",
        "model.num_classes=2",
        "--set",
        "train.global_batch=2",
        "--set",
        "train.micro_batch=1",
        "--set",
        "train.total_steps=4",
        "--set",
        "eval.every_steps=4",
        "--set",
        "checkpoint.every_steps=4",
    ])
}

/// An unreadable train image empties its micro-batch of 1: the step goes on without it (it used to
/// reach the model as an empty batch and kill the worker with SIGSEGV).
#[test]
fn an_unreadable_image_in_a_micro_batch_of_one_is_skipped() {
    let dir = tempfile::tempdir().unwrap();
    let out = train_cub(dir.path(), &[1, 4]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(0), "{stderr}");
    assert!(stderr.contains("skipping undecodable train image"), "{stderr}");
    assert!(model_bytes(dir.path(), 4).len() > 1000);
}

/// With no readable train image the run would learn nothing: a clear error before training, exit 1.
#[test]
fn a_dataset_with_no_readable_train_image_is_a_clear_error() {
    let dir = tempfile::tempdir().unwrap();
    let out = train_cub(dir.path(), &[0, 1, 2, 3, 4, 5]);
    fails_with(
        &out,
        &["none of the 6 train images sampled before training could be read"],
    );
}

/// Checkpoints that cannot be written (here `checkpoints` is a file, so no directory can be made
/// in it, even by root): the periodic save is retried and reported, training goes on, and the
/// final save's failure fails the run with the reason instead of a "finished" exit 0.
#[test]
fn a_final_checkpoint_that_cannot_be_written_fails_the_run() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = config(dir.path());
    std::fs::create_dir_all(dir.path().join("run")).unwrap();
    std::fs::write(dir.path().join("run/checkpoints"), b"in the way").unwrap();
    let out = swinfc(&["train", cfg.to_str().unwrap()]);
    fails_with(
        &out,
        &[
            "checkpoint write failed; retrying",
            "checkpoint failed; the previous one is intact",
            "the final checkpoint of step 6 could not be written",
        ],
    );
}

/// `--resume none` on a run directory with an earlier run's checkpoints refuses and leaves them
/// as they were; `--resume none --overwrite` starts afresh.
#[test]
fn a_fresh_start_keeps_an_earlier_runs_checkpoints_unless_told_to_overwrite() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = config(dir.path());
    train_local(&cfg, &[]);
    let before = model_bytes(dir.path(), 6);
    let out = swinfc(&[
        "train",
        cfg.to_str().unwrap(),
        "--resume",
        "none",
        "--set",
        "run.seed=6",
    ]);
    fails_with(
        &out,
        &["already holds checkpoints of an earlier run (newest step-00000006)"],
    );
    assert_eq!(model_bytes(dir.path(), 6), before);
    assert!(dir.path().join("run/checkpoints/step-00000003").exists());

    train_local(&cfg, &["--resume", "none", "--overwrite", "--set", "run.seed=6"]);
    assert_ne!(model_bytes(dir.path(), 6), before);
}

/// A second run on a directory in use (by `swinfc train` or a launcher) fails naming the holder; once the holder is killed (-9), its
/// lock is gone with it.
#[test]
fn a_run_directory_in_use_is_refused_and_a_dead_holders_lock_is_not_a_lock() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = config(dir.path());
    let mut first = Command::new(env!("CARGO_BIN_EXE_swinfc"))
        .args([
            "train",
            cfg.to_str().unwrap(),
            "--set",
            "train.total_steps=100000",
        ])
        .env("RAYON_NUM_THREADS", "1")
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let lock = dir.path().join("run/lock");
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    while !std::fs::read_to_string(&lock).is_ok_and(|s| s.contains("pid")) {
        assert!(
            std::time::Instant::now() < deadline,
            "the first run never took the lock"
        );
        std::thread::sleep(std::time::Duration::from_millis(20));
    }

    // Both entry points refuse: `swinfc train` and a second launcher.
    let launcher = Command::new(env!("CARGO_BIN_EXE_swinfc-launch"))
        .args(["--cpu", "1"])
        .arg(&cfg)
        .output()
        .unwrap();
    for out in [swinfc(&["train", cfg.to_str().unwrap()]), launcher] {
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "{stderr}");
        let holder = format!("in use by another launch (pid {}", first.id());
        assert!(stderr.contains(&holder), "{stderr}");
    }

    first.kill().unwrap(); // SIGKILL
    first.wait().unwrap();
    train_local(&cfg, &["--resume", "none", "--overwrite"]);
    assert!(model_bytes(dir.path(), 6).len() > 1000);
}

/// A dataset with more classes than the model's head is refused by the launcher before any worker
/// starts (it panicked in a gather inside every worker, four times over).
#[test]
fn the_launcher_refuses_a_model_with_fewer_classes_than_the_dataset_before_starting_workers() {
    let dir = tempfile::tempdir().unwrap();
    let out = launch_cub(dir.path(), &[], 1);
    let stderr = fails_with(
        &out,
        &["model.num_classes: 1 is fewer than the dataset's 2 classes"],
    );
    assert!(
        !dir.path().join("run/logs").exists(),
        "workers were started:\n{stderr}"
    );
}

/// A worker that fails on a permanent error (here: no readable train image) exits with
/// EXIT_PERMANENT and the launcher stops at once with the worker's error line, instead of
/// restarting it three times and reporting only an exit code.
#[test]
fn a_permanent_worker_error_is_not_retried() {
    let dir = tempfile::tempdir().unwrap();
    let out = launch_cub(dir.path(), &[0, 1, 2, 3, 4, 5], 2);
    let stderr = fails_with(
        &out,
        &["none of the 6 train images sampled", "a restart cannot fix"],
    );
    assert!(dir.path().join("run/logs/attempt-1").exists());
    assert!(
        !dir.path().join("run/logs/attempt-2").exists(),
        "restarted:\n{stderr}"
    );
}

/// `eval` on a torn checkpoint directory says which file failed which check, not only that
/// nothing verifies.
#[test]
fn eval_on_a_torn_checkpoint_names_the_file_and_the_check() {
    let dir = tempfile::tempdir().unwrap();
    train_local(&config(dir.path()), &[]);
    let step6 = dir.path().join("run/checkpoints/step-00000006");
    std::fs::write(step6.join("model.safetensors"), b"torn").unwrap();
    let out = swinfc(&["eval", "--checkpoint", step6.to_str().unwrap()]);
    fails_with(&out, &["model.safetensors"]);
}

/// Weights that hold a NaN (here from a pretrained file) are never committed as a resume point:
/// the save fails the run, naming the tensor, and no checkpoint directory appears.
#[test]
fn a_checkpoint_is_never_written_from_non_finite_weights() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = config(dir.path());
    train_local(&cfg, &[]);
    let mut bytes = model_bytes(dir.path(), 6);
    let header_len = u64::from_le_bytes(bytes[..8].try_into().unwrap()) as usize;
    let header: serde_json::Value = serde_json::from_slice(&bytes[8..8 + header_len]).unwrap();
    let offset = header["branch_head.s2.fc.bias"]["data_offsets"][0]
        .as_u64()
        .unwrap() as usize;
    let at = 8 + header_len + offset;
    bytes[at..at + 4].copy_from_slice(&f32::NAN.to_le_bytes());
    let pretrained = dir.path().join("nan.safetensors");
    std::fs::write(&pretrained, bytes).unwrap();

    let fresh = tempfile::tempdir().unwrap();
    let set = format!("train.pretrained={}", pretrained.display());
    let out = swinfc(&["train", config(fresh.path()).to_str().unwrap(), "--set", &set]);
    fails_with(&out, &["`branch_head.s2.fc.bias` holds a non-finite value"]);
    assert!(!fresh.path().join("run/checkpoints/step-00000003").exists());
}

/// A relative run.dir is stored resolved: the run's config.yaml names the absolute directory, so
/// eval or a resume from another working directory finds the same run.
#[test]
fn relative_paths_are_stored_absolute_in_the_resolved_config() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("config.yaml");
    std::fs::write(&cfg, CONFIG.replace("RUN_DIR", "relative-run")).unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_swinfc"))
        .args(["train", "config.yaml", "--set", "train.total_steps=1"])
        .current_dir(dir.path())
        .env("RAYON_NUM_THREADS", "1")
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let resolved = std::fs::read_to_string(dir.path().join("relative-run/config.yaml")).unwrap();
    let absolute = dir.path().join("relative-run");
    assert!(
        resolved.contains(&format!("dir: {}", absolute.display())),
        "{resolved}"
    );
}
