"""kerasae.evaluate, scripts/evaluate.py, scripts/reproduce.py (quick mode) and the pretrained zoo."""

import json
import re
import shutil
import subprocess
import sys

import numpy as np
import pytest

import kerasae
from kerasae import evaluate as ev
from kerasae import export, zoo

from conftest import REPO, run_script


@pytest.fixture(scope="module")
def vae():
    return kerasae.build("vae-mlp", hidden_units=[32], latent_dim=4, seed=0)


def test_psnr_and_reconstruction_metrics_known_values():
    x = np.zeros((3, 2, 2, 1), np.float32)
    x_hat = np.full_like(x, 0.1)
    assert ev.psnr(x, x_hat) == pytest.approx([20.0] * 3)
    m = ev.reconstruction_metrics(x, x_hat)
    assert m["mse_per_pixel"] == pytest.approx(0.01)
    assert m["bce_per_image"] == pytest.approx(-4 * np.log(0.9), rel=1e-6)
    assert m["psnr_db"] == pytest.approx(20.0)


def test_iw_nll_with_one_sample_is_minus_the_sampled_elbo(vae, mnist_binary):
    nll, elbo = ev.importance_weighted_nll(vae, mnist_binary[:8], k=1, progress=False)
    np.testing.assert_allclose(nll, -elbo, rtol=1e-12)


def test_iw_nll_is_tighter_than_the_elbo_and_agrees_with_the_model_bound(vae, mnist_binary):
    x = mnist_binary[:64]
    nll, elbo = ev.importance_weighted_nll(vae, x, k=200, batch_size=16, samples_per_chunk=64, progress=False)
    assert (nll <= -elbo + 1e-9).all()  # log-mean-exp >= mean (Jensen), example by example
    reference = -vae.importance_weighted_bound(x, 200).numpy()  # the model's own bound, other draws
    assert abs(nll.mean() - reference.mean()) < 0.5
    again, _ = ev.importance_weighted_nll(vae, x, k=200, batch_size=16, samples_per_chunk=64, progress=False)
    np.testing.assert_array_equal(nll, again)  # seeded draws: reproducible


def test_vae_evaluation_cache_is_keyed_by_weights_images_and_k(vae, mnist_binary, tmp_path, monkeypatch):
    cache, x = tmp_path / "cache.json", mnist_binary[:16]
    first = ev.evaluate_vae(vae, x, k=8, progress=False, cache=cache)
    assert first["k"] == 8 and first["evaluation_time_s"] >= 0
    calls = []
    compute = ev.importance_weighted_nll
    monkeypatch.setattr(ev, "importance_weighted_nll", lambda *a, **kw: calls.append(1) or compute(*a, **kw))
    assert ev.evaluate_vae(vae, x, k=8, progress=False, cache=cache) == json.loads(json.dumps(first))
    assert calls == []  # served from the cache
    ev.evaluate_vae(vae, x, k=9, progress=False, cache=cache)  # another k
    ev.evaluate_vae(vae, mnist_binary[16:32], k=8, progress=False, cache=cache)  # other images
    other = kerasae.build("vae-mlp", hidden_units=[32], latent_dim=4, seed=1)  # other weights
    ev.evaluate_vae(other, x, k=8, progress=False, cache=cache)
    assert len(calls) == 3 and len(json.loads(cache.read_text())) == 4


def test_active_units_and_kl_per_dimension(vae, mnist_binary):
    stats = ev.posterior_statistics(vae, mnist_binary)
    assert len(stats["kl_per_dim"]) == 4 and stats["kl"] == pytest.approx(sum(stats["kl_per_dim"]), abs=1e-3)
    dead = kerasae.build("vae-mlp", hidden_units=[32], latent_dim=4, seed=0)
    kernel, bias = dead.encoder.get_layer("enc_out").get_weights()
    kernel[:, :4] = 0.0  # the posterior mean no longer depends on x: every unit inactive
    dead.encoder.get_layer("enc_out").set_weights([kernel, bias])
    assert ev.posterior_statistics(dead, mnist_binary)["active_units"] == 0


def test_denoising_rows_and_seeded_corruption(mnist_small):
    x = mnist_small.x_test[:16]
    np.testing.assert_array_equal(ev.corrupt(x, "masking", 0.5, seed=3), ev.corrupt(x, "masking", 0.5, seed=3))
    identity = kerasae.build("ae-shallow", seed=0)
    rows = ev.evaluate_denoising(identity, x)
    assert [(r["noise"], r["level"]) for r in rows] == list(ev.DENOISING_NOISES)
    for r in rows:
        assert r["gain_db"] == pytest.approx(r["psnr_denoised_db"] - r["psnr_noisy_db"])
        assert np.isfinite(r["psnr_noisy_db"]) and r["mse_noisy"] > 0


def test_pca_baseline_and_knn(rng):
    x_train = rng.uniform(size=(200, 4, 4, 1)).astype(np.float32)
    full, _, _ = ev.pca_baseline(x_train, x_train[:50], 16)
    assert full["metrics"]["mse_per_pixel"] < 1e-10  # all components: exact
    low, z_train, z_test = ev.pca_baseline(x_train, x_train[:50], 2)
    assert low["metrics"]["mse_per_pixel"] > 1e-3 and z_train.shape == (200, 2) and z_test.shape == (50, 2)
    centers = np.array([[0, 0], [10, 10]])
    y = np.arange(100) % 2
    z = centers[y] + rng.normal(size=(100, 2))
    assert ev.knn_accuracy(z, y, z, y) == 1.0
    assert ev.knn_accuracy(rng.normal(size=(100, 2)), y, rng.normal(size=(100, 2)), y) < 0.75


def test_mmd_separates_the_prior_from_other_codes(rng):
    prior = ev.mmd_to_prior(rng.standard_normal((500, 8)), num=500)
    shifted = ev.mmd_to_prior(rng.standard_normal((500, 8)) + 2.0, num=500)
    assert abs(prior["mmd2"]) < 5 * abs(prior["mmd2_prior_vs_prior"]) + 1e-3
    assert shifted["mmd2"] > 50 * abs(prior["mmd2"]) and shifted["code_mean_norm"] > 4


def test_rate_distortion_rows(mnist_small):
    x_train, x_test = mnist_small.x_train, mnist_small.x_test[:32]
    png = ev.codec_rate_distortion(x_test, "PNG", optimize=True)
    assert png["psnr_db"] == 100.0  # lossless (MNIST is 8-bit), capped for JSON
    low, high = (ev.codec_rate_distortion(x_test, "JPEG", quality=q) for q in (10, 90))
    assert high["bytes_per_image"] > low["bytes_per_image"] and high["psnr_db"] > low["psnr_db"]
    ae = kerasae.build("ae-shallow", latent_dim=8, seed=0)
    row = ev.quantized_code_rate_distortion(ae, x_train, x_test)
    assert row["bytes_per_image"] == 8 and row["decoder_bytes"] == (8 * 784 + 784) * 4
    assert abs(row["psnr_db"] - row["psnr_unquantized_db"]) < 1.0


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("evalrun") / "dae"
    kerasae.train(preset="dae-mlp", model_kwargs={"hidden_units": [32], "latent_dim": 4}, out=str(out), epochs=1,
                  batch_size=64, max_train_samples=500, max_test_samples=100, verbose=0)
    return out


def test_evaluate_cli(tiny_run, tmp_path):
    proc = run_script("evaluate.py", tiny_run, "--no-progress", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    result = json.loads((tiny_run / "evaluation.json").read_text())
    assert result["family"] == "dae" and result["num_test"] == 100
    assert {"reconstruction", "pca_same_code_size", "denoising", "prior_match"} <= set(result)
    bad = run_script("evaluate.py", tmp_path, cwd=tmp_path)
    assert bad.returncode == 2 and "not a finished kerasae run" in bad.stderr
    bad = run_script("evaluate.py", tiny_run, "--k", "0", cwd=tmp_path)
    assert bad.returncode == 2 and "--k" in bad.stderr


@pytest.mark.slow
def test_reproduce_quick_end_to_end_and_the_zoo(tmp_path):
    """The whole reproduce path in quick mode: runs, results JSON, figures, zoo export, load_pretrained."""
    root = tmp_path / "root"
    proc = run_script("reproduce.py", "--quick", "--export-zoo", "--root", root, "--verbose", "0", cwd=tmp_path,
                      timeout=900)
    assert proc.returncode == 0, proc.stderr[-3000:]
    results, figures = root / "quick" / "results", root / "quick" / "figures"
    seed = json.loads((results / "seed_claims.json").read_text())
    nll = json.loads((results / "nll.json").read_text())
    assert seed["mode"] == "quick" and set(seed["knn_2d"]["accuracy"]) == {"PCA", "AE (ae-mlp-seed)",
                                                                          "VAE (vae-mlp-2d)"}
    for run in seed["runs"].values():
        assert run["epochs"] == 2 and run["training_time_s"] > 0 and run["versions"]["tensorflow"]
    assert set(nll["runs"]) == {"vae-nll", "iwae-nll"}
    for run in nll["runs"].values():
        assert np.isfinite(run["test"]["nll"]) and run["test"]["nll"] <= -run["test"]["elbo"]
    iwae, vae = nll["runs"]["iwae-nll"], nll["runs"]["vae-nll"]  # iwae-nll fine-tunes vae-nll's best model
    assert iwae["train_config"]["init_from"] == str(root / "quick" / "vae-nll" / "best.keras")
    assert iwae["model_config"]["num_importance_samples"] == 5 and vae["model_config"]["num_importance_samples"] == 1
    assert iwae["init_from"]["run_dir"] == vae["run_dir"] and iwae["total_epochs"] == 4
    assert iwae["total_training_time_s"] == pytest.approx(vae["training_time_s"] + iwae["training_time_s"], abs=0.2)
    for name in ("latent_2d", "denoising", "samples_ae_vs_vae", "interpolation", "vae_manifold",
                 "reconstructions", "rate_distortion", "nll_learning_curves"):
        assert (figures / f"{name}.png").stat().st_size > 1000, name
    assert "AE vs PCA" in proc.stdout and "MNIST test NLL" in proc.stdout

    zoo_dir = root / "quick" / "exported"
    assert sorted(p.name for p in zoo_dir.iterdir()) == sorted(zoo.ZOO)
    assert sorted(p.name for p in (zoo_dir / "vae-mlp" / "tflite").glob("*.tflite")) == ["decode.fp32.tflite",
                                                                                       "decode.int8.tflite"]
    model = zoo.load_pretrained("vae-mlp", zoo_dir=zoo_dir)
    assert model.metrics["test"]["nll"] == min(r["test"]["nll"] for r in nll["runs"].values())
    out = model.decode(z=np.zeros((2, 50), np.float32))
    assert out["x_mean"].shape == (2, 28, 28, 1)

    table = zoo.zoo_table(zoo_dir)
    assert f"NLL {model.metrics['test']['nll']:.2f} nats" in table and all(f"`{n}`" in table for n in zoo.ZOO)
    readme = tmp_path / "README.md"
    readme.write_text(f"intro\n{zoo.TABLE_BEGIN}\nold\n{zoo.TABLE_END}\noutro\n")
    zoo.update_readme_table(readme, table)
    assert readme.read_text() == f"intro\n{zoo.TABLE_BEGIN}\n{table}\n{zoo.TABLE_END}\noutro\n"

    # A rerun reuses every finished run and keeps a zoo model whose metric did not improve.
    before = {p: p.stat().st_mtime for p in root.rglob("model.keras")}
    again = run_script("reproduce.py", "--quick", "--export-zoo", "--root", root, "--stages", "seed", "--verbose",
                       "0", cwd=tmp_path, timeout=900)
    assert again.returncode == 0, again.stderr[-3000:]
    assert {p: p.stat().st_mtime for p in root.rglob("model.keras")} == before
    assert "kept" in again.stdout

    # A changed byte is caught before anything loads.
    variables = next((zoo_dir / "ae-mlp-seed").glob("*/variables/variables.data-*"))
    data = bytearray(variables.read_bytes())
    data[-1] ^= 0xFF
    variables.write_bytes(bytes(data))
    with pytest.raises(Exception, match="sha256 mismatch"):
        zoo.load_pretrained("ae-mlp-seed", zoo_dir=zoo_dir)
    with pytest.raises(ValueError, match="available: .*dae-mlp"):
        zoo.load_pretrained("nope", zoo_dir=zoo_dir)
    shutil.rmtree(zoo_dir)


def test_the_shipped_zoo_is_intact_and_matches_the_published_results():
    """exported/: every zoo model verifies (sha256, SavedModel and TFLite load), fits the 40 MB budget and
    carries the metrics of benchmarks/results; load_pretrained decodes images with it."""
    zoo_dir, results = REPO / "exported", REPO / "benchmarks" / "results"
    assert sum(p.stat().st_size for p in zoo_dir.rglob("*") if p.is_file()) <= zoo.MAX_ZOO_BYTES
    for name in zoo.ZOO:
        assert export.verify(zoo_dir / name) == [], name
        _, metrics, value = zoo.zoo_metrics(name, results)
        assert zoo.load_pretrained(name, zoo_dir=zoo_dir).metrics["test"] == json.loads(json.dumps(metrics["test"]))
    vae = zoo.load_pretrained("vae-mlp", zoo_dir=zoo_dir)
    x = vae.decode(z=np.zeros((3, vae.manifest["latent_dim"]), np.float32))["x_mean"].numpy()
    assert x.shape == (3, 28, 28, 1) and 0.0 <= x.min() and x.max() <= 1.0
    readme = (zoo_dir / "README.md").read_text()
    assert zoo.zoo_table(zoo_dir) in readme
    example = next(b for b in re.findall(r"```python\n(.*?)```", readme, flags=re.S) if "load_pretrained" in b)
    proc = subprocess.run([sys.executable, "-c", example], cwd=REPO, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0 and "'nll': " in proc.stdout, proc.stderr[-3000:]
