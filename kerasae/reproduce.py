"""`python scripts/reproduce.py`: train what the published claims need, evaluate, write results and figures.

Stages, each a JSON file under the results directory (RESULT_FILES):
- seed:    seed_claims.json, the classic autoencoder claims (AE vs PCA at 2-D, what denoising
           buys, AE vs VAE samples and latents, compression), plus the figures.
- nll:     nll.json, the MNIST likelihood runs (test NLL by the IWAE bound, k samples).
- resnet-nll: nll_resnet.json, the same protocol for a residual conv VAE.
- hvae-nll: nll_hvae.json, the same protocol for a two-layer hierarchical VAE with a VampPrior.
- vq:      vq_compression.json, VQ-VAEs' integer codes on the rate-distortion figure beside the seed
           stage's AEs, PNG and JPEG.
- fashion: fashion_mnist.json, AE vs PCA and an 8-bit VAE's bits/dim vs PNG on Fashion-MNIST.
- photos:  photos.json, a residual VAE's bits/dim vs PNG and WebP on unseen photographs (32x32 patches).
- photos-64: photos_64.json, the same with 64x64 patches and vae-resnet-64.
The last three live in `kerasae.reproduce_images`.
Every entry records the run's config, epochs, training time, seed and library versions.
Runs are reused when finished with the same config and resumed when interrupted, so the
same command picks up where it stopped.
"""

import json
import statistics
import time
from pathlib import Path

from kerasae import _backend  # noqa: F401
import numpy as np

from kerasae import compression
from kerasae import evaluate as ev
from kerasae import experiments, plots
from kerasae import training as train_lib
from kerasae.files import library_versions, write_json

STAGES = {"seed": ("ae-mlp-seed", "ae-mlp-32", "dae-mlp", "vae-mlp-2d", "vae-mlp"),
          "nll": ("vae-nll", "iwae-nll"),
          "fashion": ("fashion-ae-2", "fashion-ae-32", "fashion-vae"),  # kerasae.reproduce_images
          "photos": ("photos-vae-resnet-32",),
          "photos-64": ("photos-vae-resnet-64",),
          "resnet-nll": ("vae-resnet-nll",),
          "hvae-nll": ("hvae-nll", "hvae-iwae-nll"),
          "vq": ("vqvae-mlp-8", "vqvae-mlp-32", "vqvae-conv")}
RESULT_FILES = {"seed": "seed_claims.json", "nll": "nll.json", "fashion": "fashion_mnist.json",
                "photos": "photos.json", "photos-64": "photos_64.json", "resnet-nll": "nll_resnet.json",
                "hvae-nll": "nll_hvae.json", "vq": "vq_compression.json"}

#: Published one-stochastic-layer MLP results on dynamically binarized MNIST, test NLL in nats.
ANCHORS = {"Burda et al. 2015 (IWAE) Table 1, VAE k=1": 86.76,
           "Burda et al. 2015 (IWAE) Table 1, IWAE k=50": 84.78,
           "Pythae benchmark, VAE": 89.78}
#: Each likelihood stage's anchors: the two-layer stage adds Burda et al.'s two-stochastic-layer results.
STAGE_ANCHORS = {"nll": ANCHORS, "resnet-nll": ANCHORS,
                 "hvae-nll": {"Burda et al. 2015 (IWAE) Table 1, two stochastic layers, VAE k=1": 85.33,
                              "Burda et al. 2015 (IWAE) Table 1, two stochastic layers, IWAE k=50": 82.90, **ANCHORS}}
# vae-resnet-nll: beat the MLP VAE's 84.85; hvae-iwae-nll: below Burda et al.'s two-layer IWAE (82.90, k=50)
TARGETS = {"vae-nll": 85.0, "iwae-nll": 84.0, "vae-resnet-nll": 84.85, "hvae-iwae-nll": 82.5}
#: Importance samples of quick mode's NLL. The photo stages take fewer: they evaluate every tile of the test
#: photographs, each sample a residual decoder pass, and a quick NLL only has to be a bound (<= the -ELBO).
QUICK_K, QUICK_K_PHOTOS = 20, 2
#: The image pairs the interpolation figure walks between (test-set indices).
INTERPOLATION_PAIRS = ((3, 2), (1, 7), (4, 9), (0, 6))


def run_record(run_dir):
    """What a result needs to be reproducible: config, epochs, training time, seed, versions."""
    run_dir = Path(run_dir)
    config = json.loads((run_dir / "config.json").read_text())
    history = train_lib.read_history(run_dir / "history.csv")
    times = [row["epoch_time_s"] for row in history if "epoch_time_s" in row]
    record = {"run_dir": str(run_dir), "preset": config["preset"], "train_config": config["train"],
              "model_config": config["model"]["config"], "epochs": len(history),
              "training_time_s": round(sum(times), 1) if len(times) == len(history) else None,
              "seed": config["train"]["seed"], "versions": library_versions()}
    init_from = config["train"].get("init_from")
    if init_from and (Path(init_from).parent / "config.json").exists():
        # A fine-tuned run's cost includes the run it started from.
        base = run_record(Path(init_from).parent)
        record["init_from"] = {key: base[key] for key in ("run_dir", "preset", "epochs", "training_time_s")}
        record["total_epochs"] = base.get("total_epochs", base["epochs"]) + record["epochs"]
        known = None not in (record["training_time_s"], base["training_time_s"])
        record["total_training_time_s"] = (round(base.get("total_training_time_s", base["training_time_s"])
                                                  + record["training_time_s"], 1) if known else None)
    return record


# ---- the seed claims ----------------------------------------------------------------------------

def _grid(images, cols):
    return plots.image_grid(np.asarray(images), cols)


def interpolations(model, x, pairs, steps=10):
    rows = []
    for a, b in pairs:
        za, zb = ev.codes(model, x[[a, b]])
        t = np.linspace(0.0, 1.0, steps)[:, None]
        rows.append(model.decode((1 - t) * za + t * zb).numpy())
    return np.concatenate(rows)


def _manifold(model, n=20):
    """Decode a grid of z over N(0, 1) quantiles (Kingma & Welling 2014, fig. 4)."""
    q = [statistics.NormalDist().inv_cdf(p) for p in np.linspace(0.05, 0.95, n)]
    z = np.array([[zx, zy] for zy in q[::-1] for zx in q], np.float32)
    return _grid(model.decode(z).numpy(), n)


def ae_vs_pca(models, x_train, x_test, codes_2d=None):
    """Rows of test reconstruction by each AE and by PCA (fitted on x_train) at the AE's code size.
    `codes_2d` (a dict) receives PCA's (train, test) codes under "PCA" when a model has a 2-D code."""
    table = []
    for name, model in models.items():
        pca, pca_train, pca_test = ev.pca_baseline(x_train, x_test, model.latent_dim)
        table.append({"code_size": model.latent_dim, "model": name, "ae": ev.evaluate_autoencoder(model, x_test),
                      "pca": pca["metrics"], "pca_explained_variance": pca["explained_variance"]})
        if model.latent_dim == 2 and codes_2d is not None:
            codes_2d["PCA"] = (pca_train, pca_test)
    return table


def seed_claims(runs, fig_dir, k=500, progress=True):
    """The classic claims as numbers (returned) and figures (written to fig_dir)."""
    fig_dir.mkdir(parents=True, exist_ok=True)
    models = {name: ev.load_model(run_dir) for name, run_dir in runs.items()}
    data, x_train = ev.run_data(runs["ae-mlp-seed"])
    x_test, y_test = data.x_test, data.y_test
    y_train = data.y_train[:len(x_train)]
    ae2, ae32, dae, vae2, vae32 = (models[n] for n in STAGES["seed"])
    out = {"runs": {name: run_record(run_dir) for name, run_dir in runs.items()},
           "conventions": {"codes": "z for AEs, the posterior mean for VAEs, of the grayscale images",
                           "mse": "per pixel, vs the grayscale test images", "psnr": "dB, peak 1.0, mean per image",
                           "num_test": len(x_test), "num_train": len(x_train)}}

    # 1. AE vs PCA: reconstruction at the same code size, and how well 2-D codes separate digits.
    codes = {}
    out["ae_vs_pca"] = ae_vs_pca({"ae-mlp-seed": ae2, "ae-mlp-32": ae32, "dae-mlp": dae}, x_train, x_test, codes)
    codes["AE (ae-mlp-seed)"] = (ev.codes(ae2, x_train), ev.codes(ae2, x_test))
    codes["VAE (vae-mlp-2d)"] = (ev.codes(vae2, x_train), ev.codes(vae2, x_test))
    out["knn_2d"] = {"k": 5, "accuracy": {name: ev.knn_accuracy(zt, y_train, zs, y_test)
                                          for name, (zt, zs) in codes.items()}}
    plots.save_latent_scatters([(f"{name}: kNN acc {out['knn_2d']['accuracy'][name]:.3f}", zs)
                                for name, (_, zs) in codes.items()], y_test, fig_dir / "latent_2d.png")

    # 2. What denoising buys: the DAE against the plain AE on the same corrupted images.
    out["denoising"] = {"dae-mlp": ev.evaluate_denoising(dae, x_test), "ae-mlp-32": ev.evaluate_denoising(ae32, x_test)}
    panels = []
    for noise_type, level in ev.DENOISING_NOISES:
        noisy = ev.corrupt(x_test[:10], noise_type, level)
        panels.append((f"{noise_type} {level}: clean / noisy / DAE / AE",
                       _grid(np.concatenate([x_test[:10], noisy, ev.reconstruct(dae, noisy),
                                             ev.reconstruct(ae32, noisy)]), 10)))
    plots.save_panels(panels, fig_dir / "denoising.png", cols=1)

    # 3. AE vs VAE as generators and latent spaces: prior samples, interpolation, prior match.
    plots.save_panels([("AE decoder (ae-mlp-32), z ~ N(0, I)", _grid(ae32.sample(64, seed=0).numpy(), 8)),
                       ("VAE decoder (vae-mlp), z ~ N(0, I)", _grid(vae32.sample(64, seed=0).numpy(), 8))],
                      fig_dir / "samples_ae_vs_vae.png")
    plots.save_panels([("AE (ae-mlp-32)", _grid(interpolations(ae32, x_test, INTERPOLATION_PAIRS), 10)),
                       ("VAE (vae-mlp)", _grid(interpolations(vae32, x_test, INTERPOLATION_PAIRS), 10))],
                      fig_dir / "interpolation.png", suptitle="Linear interpolation between test digits' codes")
    out["prior_match"] = {name: ev.mmd_to_prior(ev.codes(models[name], x_test))
                          for name in ("ae-mlp-seed", "vae-mlp-2d", "ae-mlp-32", "vae-mlp")}
    out["prior_match"]["definition"] = ("unbiased MMD^2, inverse multiquadric kernel C = 2*D*s summed over "
                                        f"s in {list(ev._IMQ_SCALES)}, test codes vs as many N(0, I) draws")
    out["vae"] = {name: ev.evaluate_vae(models[name], x_test, k=k, progress=progress,
                                        cache=Path(runs[name]) / ev.EVALUATION_CACHE)
                  for name in ("vae-mlp-2d", "vae-mlp")}
    plots.save_image(_manifold(vae2), fig_dir / "vae_manifold.png", "VAE (2-D latent): decoded grid of z quantiles")
    plots.save_panels([(f"{name}: test images / reconstructions",
                        plots.reconstruction_grid(x_test[:10], ev.reconstruct(models[name], x_test[:10])))
                       for name in STAGES["seed"]], fig_dir / "reconstructions.png", cols=1)

    # 4. Compression: 8-bit AE codes vs PNG and JPEG.
    out["compression"] = compression.compression_table({"ae-mlp-seed": ae2, "ae-mlp-32": ae32, "dae-mlp": dae},
                                              x_train, x_test)
    plots.save_rate_distortion(out["compression"], fig_dir / "rate_distortion.png")
    return out


def vq_compression(runs, fig_dir, results_dir):
    """VQ-VAE rows (fixed-length and entropy-coded codes) with PNG and JPEG on the same test images, and the seed
    stage's AE rows (8-bit codes) where its results file exists; the rate-distortion figure of them all."""
    fig_dir.mkdir(parents=True, exist_ok=True)
    models = {name: ev.load_model(run_dir) for name, run_dir in runs.items()}
    data, x_train = ev.run_data(next(iter(runs.values())))
    rows = compression.compression_table({}, x_train, data.x_test, vq_models=models)
    seed_file = Path(results_dir) / RESULT_FILES["seed"]
    seed = json.loads(seed_file.read_text()) if seed_file.exists() else None
    if seed and seed["conventions"]["num_test"] == len(data.x_test):  # the same test images
        rows += [{**r, "from": seed_file.name} for r in seed["compression"] if r["method"].endswith("(8-bit code)")]
    plots.save_rate_distortion(rows, fig_dir / "rate_distortion_vq.png")
    return {"runs": {name: run_record(run_dir) for name, run_dir in runs.items()}, "rows": rows,
            "conventions": {"psnr": "dB, peak 1.0, mean per image", "num_test": len(data.x_test),
                            "bytes_per_image": "VQ: L * log2(K) / 8 (fixed-length codes); AE: its 8-bit code; "
                                               "decoders and codebooks shared, counted apart (decoder_bytes)",
                            "entropy_coded_bytes_per_image": "the VQ codes under the model's factorized prior "
                                                             "(per-position code frequencies of training), ideal "
                                                             "arithmetic coding"}}


# ---- the likelihood runs ------------------------------------------------------------------------

def nll_results(runs, fig_dir, k=5000, max_test_samples=None, progress=True, figure="nll_learning_curves.png",
                anchors=ANCHORS):
    fig_dir.mkdir(parents=True, exist_ok=True)
    out = {"protocol": {"k": k, "test_binarization_seed": train_lib.TEST_BINARIZATION_SEED,
                        "binarization": "dynamic (a fresh Bernoulli draw per batch) in training; the test set "
                                        "binarized once with the fixed seed",
                        "model_selection": "best.keras: the epoch with the lowest validation loss (5,000 held-out "
                                           "training images)"},
           "anchors": anchors, "runs": {}}
    curves = {}
    for name, run_dir in runs.items():
        model = ev.load_model(run_dir)
        data, _ = ev.run_data(run_dir)
        x_test = data.x_test[:max_test_samples]
        result = ev.evaluate_vae(model, x_test, k=k, progress=progress, cache=Path(run_dir) / ev.EVALUATION_CACHE)
        history = train_lib.read_history(Path(run_dir) / "history.csv")
        target = TARGETS.get(name)
        record = run_record(run_dir)
        start = record.get("total_epochs", record["epochs"]) - record["epochs"]  # a fine-tune continues its base
        out["runs"][name] = {**record, "test": result, "evaluation_time_s": result["evaluation_time_s"],
                             "target_nll": target, "meets_target": None if target is None else result["nll"] <= target,
                             "learning_curve": [{"epoch": start + row["epoch"] + 1, "loss": row["loss"],
                                                 "val_loss": row.get("val_loss"), "val_elbo": row.get("val_elbo")}
                                                for row in history]}
        epochs = [start + r["epoch"] + 1 for r in history]
        curves[f"{name} validation -ELBO"] = (epochs, [-r["val_elbo"] for r in history])
        curves[f"{name} training loss"] = (epochs, [r["loss"] for r in history])
        samples = record["model_config"].get("num_importance_samples", 1)  # (not `k`: that is the evaluation's)
        if samples > 1:
            curves[f"{name} validation -IWAE bound (k={samples})"] = (epochs, [r["val_loss"] for r in history])
    if curves:  # the floor from each curve's second half: a KL warm-up's training loss starts far below the rest
        low = min(min(values[len(values) // 2:]) for _, values in curves.values())
        plots.save_curves(curves, fig_dir / figure, "nats per image",
                          "MNIST likelihood runs (validation: fixed binarization)",
                          ylim=(low - 2, low + 25))  # the first epochs' 100-200 nats would flatten the rest
    return out


def reproduce(stages=("seed", "nll"), root="runs/reproduce", results_dir="benchmarks/results",
              fig_dir="docs/figures", quick=False, k=None, max_test_samples=None, verbose="auto", data_dirs=None):
    """Train (or reuse, or resume) each stage's runs, evaluate, write the JSON results and figures.

    Returns {stage: result dict}. Quick mode (a smoke test of this very path) writes under
    `root/quick/` unless directories are given. `data_dirs` overrides `experiments.DATA_DIRS`
    (e.g. {"fashion_mnist": DIR}).
    """
    from kerasae import reproduce_images  # it builds on this module

    results_dir, fig_dir = Path(results_dir), Path(fig_dir)

    def samples(full, stage):  # k importance samples: as asked, else a few in quick mode, else the stage's protocol
        return k or ((QUICK_K_PHOTOS if stage.startswith("photos") else QUICK_K) if quick else full)

    written = {}
    for stage in stages:
        runs = {name: experiments.run(name, root=root, quick=quick, verbose=verbose, data_dirs=data_dirs)
                for name in STAGES[stage]}
        progress, stem = verbose != 0, Path(RESULT_FILES[stage]).stem  # figures are named like the JSON
        if stage == "seed":
            result = seed_claims(runs, fig_dir, k=samples(500, stage), progress=progress)
        elif stage == "vq":
            result = vq_compression(runs, fig_dir, results_dir)
        elif stage in STAGE_ANCHORS:
            result = nll_results(runs, fig_dir, k=samples(5000, stage), max_test_samples=max_test_samples,
                                 progress=progress, figure=f"{stem}_learning_curves.png", anchors=STAGE_ANCHORS[stage])
        elif stage == "fashion":
            result = reproduce_images.fashion_results(runs, fig_dir, k=samples(reproduce_images.DEFAULT_K, stage),
                                                      progress=progress)
        else:  # photos, photos-64
            result = reproduce_images.photo_results(runs, fig_dir, k=samples(reproduce_images.DEFAULT_K, stage),
                                                    progress=progress, prefix=stem)
        result.update(mode="quick" if quick else "full", created=time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()))
        write_json(results_dir / RESULT_FILES[stage], result)
        written[stage] = result
    return written


# ---- tables -------------------------------------------------------------------------------------

def markdown_table(header, rows):
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return "\n".join(lines)


def _epochs(record):
    if "init_from" not in record:
        return record["epochs"]
    return f"{record['init_from']['epochs']} ({Path(record['init_from']['run_dir']).name}) + {record['epochs']}"


def _minutes(seconds):
    return "?" if seconds is None else f"{seconds / 60:.0f} min"


def ae_vs_pca_table(rows):
    """`ae_vs_pca`'s rows as a markdown table."""
    return markdown_table(["code size", "model", "AE MSE", "PCA MSE", "AE PSNR", "PCA PSNR"],
                  [[r["code_size"], r["model"], f"{r['ae']['mse_per_pixel']:.4f}", f"{r['pca']['mse_per_pixel']:.4f}",
                    f"{r['ae']['psnr_db']:.2f}", f"{r['pca']['psnr_db']:.2f}"] for r in rows])


def _rate_row(r):
    """[method, bytes per image (a codec's payload), whole-file bytes (codecs only), PSNR] of a compression row."""
    payload = r.get("payload_bytes_per_image")
    return [r["method"], f"{r['bytes_per_image'] if payload is None else payload:.1f}",
            "" if payload is None else f"{r['bytes_per_image']:.1f}",
            "lossless" if r["method"] == "PNG" else f"{r['psnr_db']:.2f}"]


def summary(results):
    """Markdown tables of the results (what README's Results section shows)."""
    parts = []
    seed = results.get("seed")
    if seed:
        parts.append("AE vs PCA at the same code size (test MSE per pixel, PSNR dB):\n\n"
                     + ae_vs_pca_table(seed["ae_vs_pca"]))
        parts.append("2-D codes, 5-NN test accuracy (fitted on training codes):\n\n" + markdown_table(
            ["codes", "accuracy"], [[k, f"{v:.4f}"] for k, v in seed["knn_2d"]["accuracy"].items()]))
        parts.append("Denoising (PSNR dB vs the clean test images):\n\n" + markdown_table(
            ["model", "noise", "noisy", "reconstructed", "gain"],
            [[m, f"{r['noise']} {r['level']}", f"{r['psnr_noisy_db']:.2f}", f"{r['psnr_denoised_db']:.2f}",
              f"{r['gain_db']:+.2f}"] for m, rows in seed["denoising"].items() for r in rows]))
        parts.append("Do the test codes follow N(0, I)? (MMD^2; the prior-vs-prior row is the noise floor):\n\n"
                     + markdown_table(
            ["model", "MMD^2", "prior vs prior", "|mean of codes|", "mean std of codes"],
            [[m, f"{r['mmd2']:.4f}", f"{r['mmd2_prior_vs_prior']:.4f}", f"{r['code_mean_norm']:.3f}",
              f"{r['code_std_mean']:.3f}"] for m, r in seed["prior_match"].items() if isinstance(r, dict)]))
        parts.append("VAEs (nats per image, fixed test binarization):\n\n" + markdown_table(
            ["model", "ELBO", f"NLL (k={next(iter(seed['vae'].values()))['k']})", "active units", "KL"],
            [[m, f"{r['elbo']:.2f}", f"{r['nll']:.2f}", r["active_units"], f"{r['kl']:.2f}"]
             for m, r in seed["vae"].items()]))
        parts.append("Compression (bytes per image; AE: 8-bit code only, decoder shared; codecs: payload, the "
                     "headers and tables every file repeats shared, and whole files):\n\n" + markdown_table(
                         ["method", "bytes/image", "whole file", "PSNR dB"], [_rate_row(r) for r in seed["compression"]]))
    for nll in (results.get("nll"), results.get("resnet-nll"), results.get("hvae-nll")):
        if not nll:
            continue
        parts.append(f"MNIST test NLL (IWAE bound, k={nll['protocol']['k']}), nats:\n\n" + markdown_table(
            ["run", "NLL", "ELBO", "active units", "epochs", "training time", "target", "met"],
            [[name, f"{r['test']['nll']:.2f}", f"{r['test']['elbo']:.2f}", r["test"]["active_units"], _epochs(r),
              _minutes(r.get("total_training_time_s", r["training_time_s"])), r["target_nll"], r["meets_target"]]
             for name, r in nll["runs"].items()]))
    vq = results.get("vq")
    if vq:
        parts.append("VQ-VAE codes vs AE codes and codecs on MNIST (bytes per image; decoders, codebooks and the "
                     "codecs' repeated headers and tables shared):\n\n"
                     + markdown_table(["method", "bytes/image", "whole file", "entropy-coded", "PSNR dB", "codes used"],
                                      [[*_rate_row(r)[:3], f"{r['entropy_coded_bytes_per_image']:.1f}"
                                        if "entropy_coded_bytes_per_image" in r else "", _rate_row(r)[3],
                                        f"{r['codes_used']} of {r['codebook_size']}" if "codes_used" in r else ""]
                                       for r in vq["rows"]]))
    from kerasae import reproduce_images

    parts += reproduce_images.summary_parts(results)
    return "\n\n".join(parts)
