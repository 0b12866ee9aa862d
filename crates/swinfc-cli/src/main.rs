//! `swinfc`: the user-facing tool. Thin: parses arguments and calls the swinfc libraries.

mod hint;
mod local;
mod logging;

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::{Context, Result, bail};
use burn::backend::{Autodiff, Flex, flex::FlexDevice};
use clap::{Args, Parser, Subcommand, ValueEnum};
use swinfc_bench::{self as bench, BenchSettings};
use swinfc_config::{Section, read_document};
use swinfc_model::probe::{probe, read_probe_input, write_probe_output};
use swinfc_model::weights::{self, ConvertReport, LoadReport};
use swinfc_model::{LossConfig, ModelConfig, TrainBackend, model_and_loss_from_yaml};
use swinfc_train::config::Precision;
use swinfc_train::{Resume, TrainConfig, TrainError, inference};
use tracing::info;

/// Training's activation buffers are reused across steps instead of page-faulted in afresh.
#[global_allocator]
static ALLOCATOR: swinfc_alloc::TensorCache = swinfc_alloc::TensorCache::new();

#[derive(Parser)]
#[command(name = "swinfc", version, about = "SwinFC fine-grained classification: tools")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// One evaluation-mode forward (and backward) pass, writing every output the parity
    /// contract names: logits of each head, FSM indices, loss terms, gradients.
    Forward(ForwardArgs),
    /// Train in this process alone (world size 1); `swinfc-launch` runs multi-worker jobs.
    Train(TrainArgs),
    /// One worker of a launched job; its identity comes from the SWINFC_* environment.
    #[command(hide = true)]
    Worker(TrainArgs),
    /// Top-1 of every head of a checkpoint on its config's test split.
    Eval {
        /// A checkpoint directory, or a run directory (its newest valid checkpoint).
        #[arg(long)]
        checkpoint: PathBuf,
        /// The run config (default: the one saved in the checkpoint).
        config: Option<PathBuf>,
    },
    /// The top-5 classes of image files, with probabilities.
    Predict {
        #[arg(long)]
        checkpoint: PathBuf,
        #[arg(required = true)]
        images: Vec<PathBuf>,
    },
    /// Convert an official Microsoft or timm checkpoint to swinfc safetensors (timm ≥ 0.9 names).
    ImportWeights {
        input: PathBuf,
        #[arg(short, long)]
        output: PathBuf,
        /// Drop the classifier head when it has a different number of classes.
        #[arg(long)]
        num_classes: Option<usize>,
        /// Check the result against this config's `model:` (resizing bias tables to its window).
        #[arg(long)]
        config: Option<PathBuf>,
    },
    /// Dataset tools.
    #[command(subcommand)]
    Data(DataCommand),
    /// Draw loss components, learning rates, throughput and eval accuracy over steps from a run's
    /// events.jsonl, as one SVG (for users without Grafana).
    Plot {
        run_dir: PathBuf,
        /// The SVG to write (default: RUN_DIR/report.svg).
        #[arg(short, long)]
        output: Option<PathBuf>,
    },
    /// Benchmarks, run by hand (docs/benchmarks.md).
    #[command(subcommand)]
    Bench(BenchCommand),
}

#[derive(Subcommand)]
enum BenchCommand {
    /// The training step (forward + losses + backward + gradient sync and clip + SGD update) of
    /// CONFIG's model (`model`, `loss`, `train.micro_batch`) on a random batch, its phases timed
    /// with device syncs; prints the median and spread of the timed steps.
    TrainStep(TrainStepArgs),
    /// One training step of CONFIG's model on --backend and on the CPU from the same weights and
    /// batch, compared stage by stage (gradients from backward, the flat buffer, the device's sums
    /// of squares, the synced and clipped gradient, the updated weights); exits 1 when a stage
    /// parts from the CPU beyond its tolerance.
    Probe(ProbeArgs),
    /// The step's dominant ops one at a time (forward + backward, median ms) on the CPU backend;
    /// bench/torch/ops.py times the same ops in PyTorch.
    Ops {
        /// CPU threads for Burn's kernels (default: rayon's, one per core).
        #[arg(long)]
        threads: Option<usize>,
        #[arg(long, default_value_t = 20)]
        reps: usize,
    },
}

#[derive(Args)]
struct TrainStepArgs {
    #[arg(long)]
    config: PathBuf,
    /// CPU threads for Burn's kernels (default: rayon's, one per core).
    #[arg(long)]
    threads: Option<usize>,
    /// Timed steps.
    #[arg(long, default_value_t = 10)]
    steps: usize,
    /// Untimed steps before them.
    #[arg(long, default_value_t = 2)]
    warmup: usize,
    /// Print one JSON object instead of the table.
    #[arg(long)]
    json: bool,
    #[arg(long, value_enum, default_value_t = StepBackendArg::Cpu)]
    backend: StepBackendArg,
    /// As `train.precision`: bf16 (CUDA only) computes on a bf16 copy of the f32 weights.
    #[arg(long, value_enum, default_value_t = PrecisionArg::Fp32)]
    precision: PrecisionArg,
}

#[derive(Args)]
struct ProbeArgs {
    /// `model`, `loss` and `train.micro_batch` are read.
    #[arg(long)]
    config: PathBuf,
    /// The device side (`cpu`: both sides on the CPU, the probe's own check).
    #[arg(long, value_enum, default_value_t = StepBackendArg::Cpu)]
    backend: StepBackendArg,
    /// The device side's compute precision (the CPU side is fp32).
    #[arg(long, value_enum, default_value_t = PrecisionArg::Fp32)]
    precision: PrecisionArg,
    /// The clip norm of the sync stage.
    #[arg(long, default_value_t = 1.0)]
    clip: f64,
    /// The device side on CubeBackend without Burn's fusion (every operation its own kernel;
    /// fp32): a device that parts with fusion and not without points at fusion.
    #[arg(long)]
    no_fusion: bool,
    /// Print one JSON object instead of the table.
    #[arg(long)]
    json: bool,
}

#[derive(Clone, Copy, ValueEnum)]
enum PrecisionArg {
    Fp32,
    Bf16,
}

#[derive(Subcommand)]
enum DataCommand {
    /// Read the dataset of CONFIG's `data:` section and decode every image: prints counts per
    /// split and class and the unreadable files; fails if any test image is unreadable.
    Check { config: PathBuf },
}

#[derive(Args)]
struct ForwardArgs {
    /// YAML file; only its `model:` and `loss:` sections are read.
    #[arg(long)]
    config: PathBuf,
    /// Weights: ours, timm's (.safetensors/.pth) or an official Microsoft .pth.
    #[arg(long)]
    weights: PathBuf,
    /// safetensors with `images` f32 [B,3,H,W] and `labels` i64 [B].
    #[arg(long)]
    input: PathBuf,
    #[arg(long)]
    output: PathBuf,
    /// Also write `grad.<name>` of every parameter (backward of `loss.total`).
    #[arg(long)]
    grads: bool,
    #[arg(long, value_enum, default_value_t = BackendArg::Cpu)]
    backend: BackendArg,
}

#[derive(Args)]
struct TrainArgs {
    config: PathBuf,
    /// Override a config key, e.g. `--set train.lr_new=0.01` (repeatable).
    #[arg(long = "set", value_name = "KEY=VALUE")]
    set: Vec<String>,
    /// `auto` (newest valid checkpoint of the run, else fresh), `none`, or a checkpoint directory.
    #[arg(long, default_value = "auto")]
    resume: Resume,
    /// With `--resume none`: delete the checkpoints an earlier run left in run.dir (refused
    /// otherwise).
    #[arg(long)]
    overwrite: bool,
}

#[derive(Clone, Copy, ValueEnum)]
enum BackendArg {
    Cpu,
    Cuda,
}

/// Where a training step runs.
#[derive(Clone, Copy, ValueEnum)]
enum StepBackendArg {
    /// Flex on the CPU.
    Cpu,
    Cuda,
    /// Burn's wgpu backend, in a build with the `wgpu` feature: the GPU code path on Vulkan,
    /// e.g. Mesa's software driver on a machine without a GPU.
    Wgpu,
}

fn main() -> ExitCode {
    let command = Cli::parse().command;
    logging::init(matches!(command, Command::Train(_)));
    // A worker's failure is the launcher's to explain: it knows the job, the restarts and the logs.
    let is_worker = matches!(command, Command::Worker(_));
    match run(command) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("swinfc: {}", hint::message(&e));
            if !is_worker {
                eprintln!("{}", hint::for_error(&e));
            }
            ExitCode::FAILURE
        }
    }
}

fn run(command: Command) -> Result<()> {
    match command {
        Command::Forward(args) => match args.backend {
            BackendArg::Cpu => forward::<Autodiff<Flex>>(&args, &FlexDevice),
            BackendArg::Cuda => forward_cuda(&args),
        },
        Command::Train(args) => local::train(&args),
        Command::Worker(args) => {
            swinfc_launch::install_worker_signal_policy()?;
            let run = TrainConfig::load(&args.config, &args.set)
                .map_err(TrainError::from)
                .and_then(|cfg| swinfc_train::run_worker(&cfg, &args.resume));
            match run {
                // The launcher restarts a failed worker unless this exit code says it is pointless.
                Err(e) if e.is_permanent() => {
                    tracing::error!("{e}");
                    std::process::exit(swinfc_launch::EXIT_PERMANENT);
                }
                run => Ok(run.map(|_| ())?),
            }
        }
        Command::Eval { checkpoint, config } => {
            let dir = inference::resolve_checkpoint(&checkpoint)?;
            let cfg = match config {
                Some(path) => TrainConfig::load(&path, &[])?,
                None => inference::checkpoint_config(&dir)?,
            };
            let (dir, r) = inference::evaluate_checkpoint(&dir, &cfg)?;
            println!("checkpoint {}", dir.display());
            println!("samples    {}", r.samples);
            for (head, acc) in [
                ("combined", r.combined),
                ("backbone", r.backbone),
                ("stage2", r.stage2),
                ("stage3", r.stage3),
                ("stage4", r.stage4),
            ] {
                println!("{head:<10} {:.2}%", acc * 100.0);
            }
            Ok(())
        }
        Command::Predict { checkpoint, images } => {
            for p in inference::predict(&checkpoint, &images, 5)? {
                println!("{}", p.path.display());
                for (class, prob) in p.top {
                    println!("  {:6.2}%  {class}", prob * 100.0);
                }
            }
            Ok(())
        }
        Command::ImportWeights {
            input,
            output,
            num_classes,
            config,
        } => import_weights(&input, &output, num_classes, config.as_deref()),
        Command::Data(DataCommand::Check { config }) => data_check(&config),
        Command::Plot { run_dir, output } => {
            let output = output.unwrap_or_else(|| run_dir.join("report.svg"));
            if output.extension().is_none_or(|e| !e.eq_ignore_ascii_case("svg")) {
                bail!("{}: the report is SVG only; name it *.svg", output.display());
            }
            let summary = swinfc_metrics::plot::plot_run(&run_dir, &output)?;
            println!(
                "{}: {} step summaries, {} evals",
                output.display(),
                summary.step_summaries,
                summary.evals
            );
            Ok(())
        }
        Command::Bench(BenchCommand::TrainStep(args)) => bench_train_step(&args),
        Command::Bench(BenchCommand::Probe(args)) => bench_probe(&args),
        Command::Bench(BenchCommand::Ops { threads, reps }) => {
            if let Some(threads) = threads {
                bench::set_cpu_threads(threads).context("sizing the CPU thread pool")?;
            }
            println!(
                "{:<40} {:>10}",
                format!("op, fwd+bwd (burn flex, {} threads)", bench::cpu_threads()),
                "median ms"
            );
            for (op, ms) in bench::ops::<Autodiff<Flex>>(reps, &FlexDevice) {
                println!("{op:<40} {ms:>10.3}");
            }
            Ok(())
        }
    }
}

fn read_config(path: &Path) -> Result<(ModelConfig, LossConfig)> {
    let doc = read_document(path, &[])?;
    model_and_loss_from_yaml(&doc).with_context(|| format!("in {}", path.display()))
}

fn forward<B: TrainBackend>(args: &ForwardArgs, dev: &B::Device) -> Result<()> {
    let (model_cfg, loss_cfg) = read_config(&args.config)?;
    let model = model_cfg.init::<B>(0, dev);
    let (model, convert, load) = weights::load_pretrained(model, &args.weights)?;
    log_reports(&convert, &load);
    let outputs = probe(&model, read_probe_input(&args.input)?, &loss_cfg, args.grads);
    write_probe_output(&args.output, &outputs)?;
    info!(tensors = outputs.len(), path = %args.output.display(), "wrote outputs");
    Ok(())
}

#[cfg(feature = "cuda")]
fn forward_cuda(args: &ForwardArgs) -> Result<()> {
    use burn::backend::{Cuda, cuda::CudaDevice};
    if swinfc_model::backend::cuda_device_count() == 0 {
        bail!("--backend cuda: no CUDA device is visible (is libcuda installed and a GPU present?)");
    }
    forward::<Autodiff<Cuda>>(args, &CudaDevice::new(0))
}

#[cfg(not(feature = "cuda"))]
fn forward_cuda(_: &ForwardArgs) -> Result<()> {
    bail!("--backend cuda: this binary was built without the `cuda` feature (cargo build --features cuda)")
}

fn bench_train_step(args: &TrainStepArgs) -> Result<()> {
    if args.steps == 0 {
        bail!("--steps must be at least 1");
    }
    let doc = read_document(&args.config, &[])?;
    let (model_cfg, loss_cfg, micro_batch) =
        bench::config_from_yaml(&doc).with_context(|| format!("in {}", args.config.display()))?;
    let settings = BenchSettings {
        micro_batch,
        steps: args.steps,
        warmup: args.warmup,
        seed: 0,
        precision: match args.precision {
            PrecisionArg::Fp32 => Precision::Fp32,
            PrecisionArg::Bf16 => Precision::Bf16,
        },
    };
    let (report, device) = match (args.backend, args.precision) {
        (StepBackendArg::Cpu, PrecisionArg::Fp32) => {
            if let Some(threads) = args.threads {
                bench::set_cpu_threads(threads).context("sizing the CPU thread pool")?;
            }
            let device = format!("cpu, {} threads", bench::cpu_threads());
            (bench::train_step_cpu(&model_cfg, &loss_cfg, &settings)?, device)
        }
        (StepBackendArg::Cpu, PrecisionArg::Bf16) => {
            bail!("--precision bf16 is not supported with --backend cpu: the CPU backend trains in fp32 only")
        }
        (StepBackendArg::Cuda, _) => (
            bench_train_step_cuda(&model_cfg, &loss_cfg, &settings)?,
            "cuda:0".into(),
        ),
        (StepBackendArg::Wgpu, PrecisionArg::Fp32) => (
            bench_train_step_wgpu(&model_cfg, &loss_cfg, &settings)?,
            "wgpu".into(),
        ),
        (StepBackendArg::Wgpu, PrecisionArg::Bf16) => bail!("--backend wgpu trains in fp32 only"),
    };
    let precision = match args.precision {
        PrecisionArg::Fp32 => "fp32",
        PrecisionArg::Bf16 => "bf16",
    };
    if args.json {
        let mut value = serde_json::to_value(&report)?;
        value["implementation"] = "swinfc (burn)".into();
        value["config"] = args.config.display().to_string().into();
        value["device"] = device.into();
        value["precision"] = precision.into();
        println!("{value}");
    } else {
        println!(
            "swinfc (burn) train step: {}, {device}, {precision}",
            args.config.display()
        );
        print!("{}", report.table());
    }
    Ok(())
}

fn bench_probe(args: &ProbeArgs) -> Result<()> {
    let doc = read_document(&args.config, &[])?;
    let (model_cfg, loss_cfg, micro_batch) =
        bench::config_from_yaml(&doc).with_context(|| format!("in {}", args.config.display()))?;
    let settings = BenchSettings {
        micro_batch,
        steps: 1,
        warmup: 0,
        seed: 0,
        precision: match args.precision {
            PrecisionArg::Fp32 => Precision::Fp32,
            PrecisionArg::Bf16 => Precision::Bf16,
        },
    };
    let fusion = !args.no_fusion;
    if args.no_fusion && !matches!(args.precision, PrecisionArg::Fp32) {
        bail!("--no-fusion probes fp32 only");
    }
    let report = match (args.backend, args.precision) {
        (StepBackendArg::Cpu, PrecisionArg::Fp32) => {
            bench::probe::probe_cpu(&model_cfg, &loss_cfg, &settings, args.clip)?
        }
        (StepBackendArg::Cpu, PrecisionArg::Bf16) => {
            bail!("--precision bf16 is not supported with --backend cpu: the CPU backend trains in fp32 only")
        }
        (StepBackendArg::Cuda, _) => probe_cuda(&model_cfg, &loss_cfg, &settings, args.clip, fusion)?,
        (StepBackendArg::Wgpu, PrecisionArg::Fp32) => {
            probe_wgpu(&model_cfg, &loss_cfg, &settings, args.clip, fusion)?
        }
        (StepBackendArg::Wgpu, PrecisionArg::Bf16) => bail!("--backend wgpu probes fp32 only"),
    };
    if args.json {
        println!("{}", serde_json::to_string(&report)?);
    } else {
        print!("{}", report.table());
    }
    match report.first_parting() {
        Some(stage) => bail!(
            "the device parts from the CPU at `{}` ({})",
            stage.name,
            stage.worst
        ),
        None => Ok(()),
    }
}

#[cfg(not(feature = "wgpu"))]
const WITHOUT_WGPU: &str = "--backend wgpu: this binary was built without the `wgpu` feature (cargo build --features swinfc-cli/wgpu)";

#[cfg(feature = "wgpu")]
fn probe_wgpu(
    model_cfg: &ModelConfig,
    loss_cfg: &LossConfig,
    settings: &BenchSettings,
    clip: f64,
    fusion: bool,
) -> Result<bench::probe::ProbeReport> {
    Ok(bench::probe::probe_wgpu(
        model_cfg, loss_cfg, settings, clip, fusion,
    )?)
}

#[cfg(not(feature = "wgpu"))]
fn probe_wgpu(
    _: &ModelConfig,
    _: &LossConfig,
    _: &BenchSettings,
    _: f64,
    _: bool,
) -> Result<bench::probe::ProbeReport> {
    bail!(WITHOUT_WGPU)
}

#[cfg(feature = "cuda")]
fn probe_cuda(
    model_cfg: &ModelConfig,
    loss_cfg: &LossConfig,
    settings: &BenchSettings,
    clip: f64,
    fusion: bool,
) -> Result<bench::probe::ProbeReport> {
    if swinfc_model::backend::cuda_device_count() == 0 {
        bail!("--backend cuda: no CUDA device is visible (is libcuda installed and a GPU present?)");
    }
    Ok(bench::probe::probe_cuda(
        model_cfg, loss_cfg, settings, clip, fusion,
    )?)
}

#[cfg(not(feature = "cuda"))]
fn probe_cuda(
    _: &ModelConfig,
    _: &LossConfig,
    _: &BenchSettings,
    _: f64,
    _: bool,
) -> Result<bench::probe::ProbeReport> {
    bail!("--backend cuda: this binary was built without the `cuda` feature (cargo build --features cuda)")
}

#[cfg(feature = "cuda")]
fn bench_train_step_cuda(
    model_cfg: &ModelConfig,
    loss_cfg: &LossConfig,
    settings: &BenchSettings,
) -> Result<bench::BenchReport> {
    if swinfc_model::backend::cuda_device_count() == 0 {
        bail!("--backend cuda: no CUDA device is visible (is libcuda installed and a GPU present?)");
    }
    Ok(bench::train_step_cuda(model_cfg, loss_cfg, settings)?)
}

#[cfg(not(feature = "cuda"))]
fn bench_train_step_cuda(_: &ModelConfig, _: &LossConfig, _: &BenchSettings) -> Result<bench::BenchReport> {
    bail!("--backend cuda: this binary was built without the `cuda` feature (cargo build --features cuda)")
}

#[cfg(feature = "wgpu")]
fn bench_train_step_wgpu(
    model_cfg: &ModelConfig,
    loss_cfg: &LossConfig,
    settings: &BenchSettings,
) -> Result<bench::BenchReport> {
    Ok(bench::train_step_wgpu(model_cfg, loss_cfg, settings)?)
}

#[cfg(not(feature = "wgpu"))]
fn bench_train_step_wgpu(_: &ModelConfig, _: &LossConfig, _: &BenchSettings) -> Result<bench::BenchReport> {
    bail!(WITHOUT_WGPU)
}

fn import_weights(
    input: &Path,
    output: &Path,
    num_classes: Option<usize>,
    config: Option<&Path>,
) -> Result<()> {
    let model = match config {
        Some(path) => {
            let (mut cfg, _) = read_config(path)?;
            cfg.num_classes = num_classes.unwrap_or(cfg.num_classes);
            Some(cfg.init::<Flex>(0, &FlexDevice))
        }
        None => None,
    };
    let (dict, convert, load) = weights::import_checkpoint(input, model, num_classes)?;
    log_reports(&convert, &load);
    weights::write_safetensors(output, &dict, None)?;
    info!(tensors = dict.len(), path = %output.display(), "wrote weights");
    Ok(())
}

fn log_reports(convert: &ConvertReport, load: &LoadReport) {
    info!(
        layout = ?convert.layout,
        unwrapped = ?convert.unwrapped,
        dropped = convert.dropped.len(),
        resized = ?convert.resized,
        "converted checkpoint"
    );
    if load.loaded > 0 {
        info!(loaded = load.loaded, "loaded weights");
    }
    for key in &load.initialised {
        info!(%key, "not in the weights: initialised (seeded)");
    }
    for key in &load.unexpected {
        info!(%key, "in the weights but not in the model: ignored");
    }
}

fn data_check(path: &Path) -> Result<()> {
    let doc = read_document(path, &[])?;
    let cfg = Section::root(&doc)
        .and_then(|mut root| root.required("data"))
        .and_then(|section| swinfc_data::DataConfig::from_yaml(&section))
        .with_context(|| format!("in {}", path.display()))?;
    let bar = indicatif::ProgressBar::new(0).with_style(
        indicatif::ProgressStyle::with_template("{bar:40} {pos}/{len} images ({per_sec}, {eta} left)")
            .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
    );
    let report = swinfc_data::check(&cfg, &|_, total| {
        bar.set_length(total as u64);
        bar.inc(1);
    })?;
    bar.finish_and_clear();

    let (train, test): (usize, usize) = (
        report.train_per_class.iter().sum(),
        report.test_per_class.iter().sum(),
    );
    println!(
        "{}: {} classes, {train} train, {test} test images",
        report.dataset,
        report.classes.len()
    );
    println!("{:>5} {:>7} {:>7}  class", "label", "train", "test");
    for (k, name) in report.classes.iter().enumerate() {
        println!(
            "{k:>5} {:>7} {:>7}  {name}",
            report.train_per_class[k], report.test_per_class[k]
        );
    }
    println!("{} unreadable", report.unreadable.len());
    for u in &report.unreadable {
        println!("{:>5}  {}  {}", u.split.name(), u.path, u.reason);
    }
    let bad = report.test_unreadable();
    if bad > 0 {
        bail!("{bad} test images are unreadable: the test split would not match the published one");
    }
    Ok(())
}
