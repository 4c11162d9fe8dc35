"""kerasae.codec.training and photos: resumable ladder training and the photographs' split and crops."""

import json

import numpy as np
import pytest

from kerasae.codec import Coder, photos, shipping, training

crop_dataset = photos.crop_dataset


def test_the_split_is_by_photograph_and_every_photo_says_where_it_came_from():
    train, validation, test = (photos.photos(split) for split in ("train", "validation", "test"))
    names = [{p.name for p in split} for split in (train, validation, test)]
    assert sum(map(len, names)) == len(set().union(*names)) == len(photos.PHOTOS) and len(test) >= 6
    assert all(p.source and p.licence for p in photos.PHOTOS)
    with pytest.raises(ValueError, match="split"):
        photos.photos("holdout")
    with pytest.raises(ValueError, match="unknown photo"):
        photos.load("flickr:nothing")


def test_the_training_sets_are_the_ten_first_photographs_and_all_of_them(tmp_path, monkeypatch):
    ten, every = photos.training_photos("ten"), photos.training_photos("all")
    assert every == photos.photos("train") and len(ten) == 10 and len(every) > 30
    assert set(ten) < set(every) and not any(p.name.startswith("background:") for p in ten)
    assert {p.name.split(":")[0] for p in every if p not in ten} == {"background"}
    with pytest.raises(ValueError, match="photo_set must be one of .*'ten', 'all'.*got 'some'"):
        photos.training_photos("some")
    monkeypatch.setattr(photos, "BACKGROUNDS", tmp_path)
    with pytest.raises(FileNotFoundError, match="Dragonfly_by_Bolly.jpg is not there: install .*mate-backgrounds"):
        photos.load("background:Dragonfly_by_Bolly.jpg")
    from PIL import Image

    (tmp_path / "mate" / "nature").mkdir(parents=True)
    Image.fromarray(np.full((6, 9), 77, np.uint8)).save(tmp_path / "mate" / "nature" / "Aqua.jpg")
    image = photos.load("background:mate/nature/Aqua.jpg")  # grey to RGB
    assert image.shape == (6, 9, 3) and image.dtype == np.uint8 and abs(int(image.mean()) - 77) <= 1


def test_random_crops_are_seeded_crops_of_the_photos():
    image = np.arange(60 * 80 * 3, dtype=np.uint8).reshape(60, 80, 3)
    a = photos.random_crops([image], 16, 5, np.random.default_rng(0), scales=(1.0, 1.0))
    b = photos.random_crops([image], 16, 5, np.random.default_rng(0), scales=(1.0, 1.0))
    np.testing.assert_array_equal(a, b)
    assert a.shape == (5, 16, 16, 3) and a.dtype == np.float32
    for crop in (a * 255).round().astype(np.uint8):  # each one a window of the photo (flipped or not)
        found = any(np.array_equal(crop, image[r:r + 16, c:c + 16][:, ::f])
                    for r in range(45) for c in range(65) for f in (1, -1))
        assert found


def test_random_crops_are_downscaled_windows_and_bad_scales_are_refused():
    from PIL import Image

    image = np.random.default_rng(2).integers(0, 256, (40, 50, 3), dtype=np.uint8)
    crops = photos.random_crops([image], 8, 3, np.random.default_rng(0), scales=(0.5, 0.5))
    windows = [np.asarray(Image.fromarray(image[r:r + 16, c:c + 16]).resize((8, 8), Image.Resampling.BOX))
               for r in range(25) for c in range(35)]
    for crop in (crops * 255).round().astype(np.uint8):  # a 16-pixel window halved (flipped or not)
        assert any(np.array_equal(crop, w[:, ::f]) for w in windows for f in (1, -1))
    for bad in ((0.0, 0.5), (0.5, 0.25), (0.5, 2.0)):
        with pytest.raises(ValueError, match="scales"):
            photos.random_crops([image], 8, 1, np.random.default_rng(0), scales=bad)


def test_a_crop_stream_reseeded_every_k_batches_can_be_resumed_at_any_multiple_of_k():
    image = np.random.default_rng(3).integers(0, 256, (50, 60, 3), dtype=np.uint8)
    whole = [b.numpy() for b in photos.crop_dataset([image], 8, 2, 6, seed=10, scales=(0.5, 1.0), reseed_every=2)]
    resumed_at_4 = [b.numpy() for b in photos.crop_dataset([image], 8, 2, 2, seed=14, scales=(0.5, 1.0))]
    np.testing.assert_array_equal(np.stack(whole[4:]), np.stack(resumed_at_4))
    assert not np.array_equal(whole[0], whole[2])


def resumed(run):
    return training._resume(run, json.loads((run / "state.json").read_text()))


def test_training_resumes_where_it_was_interrupted_and_ends_with_a_coder(tmp_path, monkeypatch):
    monkeypatch.setattr(training, "CHUNK", 2)
    images = [np.random.default_rng(1).integers(0, 256, (80, 90, 3), dtype=np.uint8)]
    kwargs = dict(family="factorized", quality=2, steps=4, crop=32, batch_size=2, images=images, filters=8,
                  latent_channels=8)

    class Interrupted(Exception):
        pass

    def log(line):
        if "step 2/4" in line:
            raise Interrupted

    with pytest.raises(Interrupted):
        training.train(tmp_path / "run", log=log, **kwargs)
    assert resumed(tmp_path / "run").optimizer.iterations.numpy() == 2
    assert not (tmp_path / "run" / "metrics.json").exists()
    lines = []
    metrics = training.train(tmp_path / "run", log=lines.append, **kwargs)
    assert [line.split(" (")[0].split(" bpp")[0] for line in lines] == ["run: step 4/4"]  # one chunk left
    assert metrics["step"] == 4 and json.loads((tmp_path / "run" / "metrics.json").read_text())["step"] == 4
    assert metrics["final"]["val_bpp"] > 0 and 0 < metrics["final"]["val_psnr"] < 60
    model = resumed(tmp_path / "run")
    assert model.optimizer.iterations.numpy() == 4 and model.lmbda == pytest.approx(0.0035)
    coder = Coder.load(tmp_path / "run" / "codec")
    image = images[0][:48, :64]
    np.testing.assert_array_equal(coder.decompress(coder.compress(image)), coder.reconstruct(image))
    assert training.train(tmp_path / "run", log=lines.append, **kwargs) == metrics  # finished: nothing more


def test_ladder_arguments_are_checked():
    with pytest.raises(ValueError, match="family must be one of"):
        training.build("vq", 1)
    with pytest.raises(ValueError, match="quality must be an integer from 1 to 8, got 9"):
        training.build("hyperprior", 9)
    with pytest.raises(ValueError, match="quality must be an integer from 1 to 8, got True"):
        training.build("factorized", True)
    with pytest.raises(ValueError, match="unknown keyword.*image_shape"):
        training.build("factorized", 1, image_shape=(64, 64, 3))
    model = training.build("factorized", 2, seed=3, filters=8, latent_channels=8)  # the preset with overrides
    assert (model.name, model.seed, model.filters, model.lmbda) == ("factorized_q2", 3, 8, 0.0035)


def test_the_autoencoder_training_refuses_a_codec_to_fine_tune(tmp_path):
    import kerasae

    path = tmp_path / "codec.keras"
    training.build("factorized", 1, filters=8, latent_channels=8).save(path)
    with pytest.raises(ValueError, match="is a learned image codec .*FactorizedPriorCodec.*train_codec.py"):
        kerasae.train(init_from=str(path), out=str(tmp_path / "run"), max_train_samples=64, max_test_samples=16,
                      validation_size=16, epochs=1, verbose=0)


def test_ship_puts_the_finished_ladder_into_the_zoo_as_float16_entries_and_swaps_them_whole(tmp_path, monkeypatch):
    from kerasae.codec import api

    monkeypatch.setattr(training, "CHUNK", 2)
    monkeypatch.setattr(training, "LADDER_PLAN", {"factorized": ((1, 2, None), (2, 2, 1))})
    monkeypatch.setattr(training, "STAGES", {})  # the runs above are the ladder's last stage
    images = [np.random.default_rng(4).integers(0, 256, (70, 70, 3), dtype=np.uint8)]
    zoo_dir = tmp_path / "zoo"
    zoo_dir.mkdir()
    with pytest.raises(ValueError, match="has not finished training"):
        shipping.ship(tmp_path / "runs", zoo_dir, "factorized", log=lambda line: None)
    for quality in (1, 2):
        training.train(tmp_path / "runs" / f"factorized_q{quality}", "factorized", quality, 2, crop=32, batch_size=2,
                       images=images, filters=8, latent_channels=8, log=lambda line: None)
    shipped = shipping.ship(tmp_path / "runs", zoo_dir, "factorized", log=lambda line: None)
    assert sorted(p.name for p in zoo_dir.iterdir()) == ["codec_factorized_q1_photos", "codec_factorized_q2_photos"]
    assert api.zoo_codecs(zoo_dir) == sorted(shipped)
    image = images[0][:40, :50]
    validation = photos.validation_image()
    for name, folder in shipped.items():
        info = json.loads((folder / "codec.json").read_text())
        assert info["weights"] == "float16"
        coder = Coder.load(folder)
        data = coder.compress(image)
        assert name.encode() in data[:64]  # the file names its entry, which decompress looks up
        np.testing.assert_array_equal(coder.decompress(data), coder.reconstruct(image))
        # what `kerasae zoo` lists: the shipped coder's own file of the validation photograph
        file = coder.compress(validation)
        bpp = 8 * len(file) / (validation.shape[0] * validation.shape[1])
        assert info["metric"].startswith(f"{bpp:.3f} bpp, PSNR ") and info["metric"].endswith(" (validation photo)")
    first = (zoo_dir / "codec_factorized_q1_photos" / "weights.npz").read_bytes()
    shipping.ship(tmp_path / "runs", zoo_dir, "factorized", log=lambda line: None)  # again: replaced whole
    assert (zoo_dir / "codec_factorized_q1_photos" / "weights.npz").read_bytes() == first
    assert sorted(p.name for p in zoo_dir.iterdir()) == ["codec_factorized_q1_photos", "codec_factorized_q2_photos"]
    monkeypatch.setattr("kerasae.zoo.MAX_ZOO_BYTES", 1000)
    with pytest.raises(ValueError, match="budget"):
        shipping.ship(tmp_path / "runs", zoo_dir, "factorized", log=lambda line: None)
    assert sorted(p.name for p in zoo_dir.iterdir()) == ["codec_factorized_q1_photos", "codec_factorized_q2_photos"]


def test_the_ladder_takes_every_quality_through_its_stages_and_ships_the_last(tmp_path, monkeypatch):
    monkeypatch.setattr(training, "CHUNK", 2)
    monkeypatch.setattr(training, "LADDER_PLAN", {"hyperprior": ((2, 2, None), (1, 2, 2))})
    monkeypatch.setattr(training, "STAGES", {"hyperprior": (("refined", 4, 5e-5, True, "ten"),
                                                            ("tuned", 2, 2e-4, False, "all"))})
    # each photo set stands for a different small photo here: the runs must crop the stage's own
    sets = {name: np.random.default_rng(i).integers(0, 256, (80, 80, 3), dtype=np.uint8)
            for i, name in enumerate(photos.TRAINING_SETS)}
    crops = []
    monkeypatch.setattr(training, "_training_images", lambda photo_set: ([sets[photo_set]], sets[photo_set]))
    monkeypatch.setattr(photos, "crop_dataset", lambda images, *a, **k: (crops.append(images[0]),
                                                                                   crop_dataset(images, *a, **k))[1])
    root = tmp_path / "runs"
    results = training.train_ladder(root, "hyperprior", log=lambda line: None, crop=64, batch_size=2, filters=8,
                                    latent_channels=8)
    assert sorted(p.name for p in root.iterdir()) == [f"hyperprior_q{q}{stage}" for q in (1, 2)
                                                      for stage in ("", "_refined", "_tuned")]
    for quality in (1, 2):
        base, refined, tuned = (root / f"hyperprior_q{quality}{stage}" for stage in ("", "_refined", "_tuned"))
        assert results[quality] == json.loads((tuned / "metrics.json").read_text())
        stages = [json.loads((run / "metrics.json").read_text()) for run in (base, refined, tuned)]
        assert [(m["step"], m["learning_rate"], m["init_from"], m["photo_set"]) for m in stages] == [
            (2, 3e-4, None if quality == 2 else str(root / "hyperprior_q2" / "codec"), training.LADDER_PHOTOS),
            (4, 5e-5, str(base / "codec"), "ten"), (2, 2e-4, str(refined / "codec"), "all")]
        assert resumed(refined).straight_through
        assert not resumed(base).straight_through and not resumed(tuned).straight_through
    used = [next(name for name, image in sets.items() if image is cropped) for cropped in crops]
    assert used == ["ten"] * 2 + ["ten", "all"] * 2  # the ladder's runs, then each quality's stages
    zoo_dir = tmp_path / "zoo"
    zoo_dir.mkdir()
    shipped = shipping.ship(root, zoo_dir, "hyperprior", log=lambda line: None)
    for quality in (1, 2):
        weights = Coder.load(shipped[shipping.zoo_name("hyperprior", quality)]).model.get_weights()
        last = Coder.load(root / f"hyperprior_q{quality}_tuned" / "codec").rounded_to_float16()
        refined = Coder.load(root / f"hyperprior_q{quality}_refined" / "codec").rounded_to_float16()
        assert all(np.array_equal(a, b) for a, b in zip(weights, last.model.get_weights()))
        assert not all(np.array_equal(a, b) for a, b in zip(weights, refined.model.get_weights()))


def test_the_zoo_names_of_the_ladder_are_the_ones_the_api_looks_up():
    from kerasae.codec import api

    assert api.LADDER == tuple(shipping.zoo_name("hyperprior", q) for q, _, _ in
                               sorted(training.LADDER_PLAN["hyperprior"]))


def test_train_codec_help_answers_without_loading_tensorflow():
    import subprocess
    import sys

    script = ("import sys\nfrom kerasae.codec import training\n"
              "try:\n    training.main(['--help'])\nexcept SystemExit as e:\n    code = e.code\n"
              "print('loaded:', sorted(m for m in ('tensorflow', 'keras') if m in sys.modules), 'exit', code)")
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "--ship ZOO_DIR" in proc.stdout and proc.stdout.rstrip().endswith("loaded: [] exit 0")


def test_a_diverged_chunk_stops_training_and_keeps_the_last_good_checkpoint(tmp_path, monkeypatch):
    monkeypatch.setattr(training, "CHUNK", 2)
    images = [np.random.default_rng(1).integers(0, 256, (80, 90, 3), dtype=np.uint8)]
    kwargs = dict(family="factorized", quality=2, steps=6, crop=32, batch_size=2, images=images, filters=8,
                  latent_channels=8, log=lambda line: None)
    original = training._validation

    def blow_up_after_step_2(model, image):  # the weights go bad at the end of the second chunk
        if model.optimizer.iterations.numpy() == 4:
            model.set_weights([w * 1e3 if w.ndim == 4 else w for w in model.get_weights()])
        return original(model, image)

    saved, save = [], training._save_checkpoint
    monkeypatch.setattr(training, "_validation", blow_up_after_step_2)
    monkeypatch.setattr(training, "_save_checkpoint", lambda model, out, state: (saved.append(state["step"]),
                                                                                save(model, out, state)))
    with pytest.raises(FloatingPointError, match="diverged in steps 4-6"):
        training.train(tmp_path / "run", **kwargs)
    assert saved == [2, 4]  # the diverged chunk is not saved over step 4's checkpoint
    state = json.loads((tmp_path / "run" / "state.json").read_text())
    assert state["step"] == 4 and not (tmp_path / "run" / "metrics.json").exists()
    assert resumed(tmp_path / "run").optimizer.iterations.numpy() == 4
    assert resumed(tmp_path / "run").optimizer.global_clipnorm == 1.0


def test_a_factorized_codec_starts_from_the_transforms_of_a_saved_or_shipped_hyperprior(tmp_path, monkeypatch):
    from kerasae.codec.models import ScaleHyperpriorCodec

    monkeypatch.setattr(training, "CHUNK", 2)
    source = ScaleHyperpriorCodec(filters=8, latent_channels=8, seed=7)
    Coder(source, name="small").save(tmp_path / "hyperprior")
    images = [np.random.default_rng(6).integers(0, 256, (70, 70, 3), dtype=np.uint8)]
    kwargs = dict(crop=32, batch_size=2, images=images, filters=8, latent_channels=8, log=lambda line: None)
    # a step so small that the transforms stay what they started from: the hyperprior's
    training.train(tmp_path / "run", "factorized", 2, 2, init_from=tmp_path / "hyperprior", learning_rate=1e-12,
                   **kwargs)
    model = resumed(tmp_path / "run")
    for part in ("analysis", "synthesis"):
        for mine, theirs in zip(getattr(model, part).get_weights(), getattr(source, part).get_weights()):
            np.testing.assert_allclose(mine, theirs, atol=1e-8)
    # and the other way: a hyperprior from the factorized run's transforms (its entropy model trains from scratch)
    training.train(tmp_path / "back", "hyperprior", 2, 2, init_from=tmp_path / "run" / "codec", learning_rate=1e-12,
                   **{**kwargs, "crop": 64})  # a multiple of the hyperprior's stride
    for mine, theirs in zip(resumed(tmp_path / "back").synthesis.get_weights(), model.synthesis.get_weights()):
        np.testing.assert_allclose(mine, theirs, atol=1e-8)
    with pytest.raises(ValueError, match="init_from: .*analysis weights have other shapes.*filters 8 and 4"):
        training.train(tmp_path / "small", "factorized", 2, 2, init_from=tmp_path / "hyperprior",
                       **{**kwargs, "filters": 4})
    with pytest.raises(ValueError, match="init_from must be a checkpoint.keras file, a saved codec's folder"):
        training.train(tmp_path / "none", "factorized", 2, 2, init_from=tmp_path / "nothing", **kwargs)
    # the ladder's plan: each factorized quality from the hyperprior of its quality after its "refined" stage, a
    # run under the same root that must be there
    assert [start for _, _, start in training.LADDER_PLAN["factorized"]] == [
        f"run:hyperprior_q{q}_refined" for q, _, _ in training.LADDER_PLAN["factorized"]]
    assert training.STAGES["hyperprior"][0][0] == "refined"
    monkeypatch.setattr(training, "LADDER_PLAN", {"factorized": ((2, 2, "run:hyperprior_q2_refined"),)})
    monkeypatch.setattr(training, "STAGES", {})
    with pytest.raises(ValueError, match="quality 2 starts from .*hyperprior_q2_refined.* --family hyperprior"):
        training.train_ladder(tmp_path / "ladder", "factorized", **kwargs)
    assert not (tmp_path / "ladder" / "factorized_q2").exists()
    Coder(source, name="small").save(tmp_path / "ladder" / "hyperprior_q2_refined" / "codec")
    metrics = training.train_ladder(tmp_path / "ladder", "factorized", learning_rate=1e-12, **kwargs)[2]
    assert metrics["init_from"] == str(tmp_path / "ladder" / "hyperprior_q2_refined" / "codec")
    for mine, theirs in zip(resumed(tmp_path / "ladder" / "factorized_q2").analysis.get_weights(),
                            source.analysis.get_weights()):
        np.testing.assert_allclose(mine, theirs, atol=1e-8)
    shipped = training._source_model("zoo:codec_hyperprior_q1_photos")
    factorized = training.build("factorized", 1)
    training._initialize(factorized, shipped)
    assert all(np.array_equal(a, b) for a, b in zip(factorized.synthesis.get_weights(),
                                                     shipped.synthesis.get_weights()))


def test_a_codec_trains_in_bfloat16_and_its_files_are_made_in_float32(tmp_path, monkeypatch):
    """precision="bfloat16": the transforms' hidden layers compute in bfloat16, the layers that take and make pixels
    and latents, the hyper transforms and the entropy models in float32; the saved codec is float32 throughout and
    decodes its files exactly; a run resumed keeps its precision."""
    monkeypatch.setattr(training, "CHUNK", 2)
    images = [np.random.default_rng(8).integers(0, 256, (80, 80, 3), dtype=np.uint8)]
    kwargs = dict(crop=64, batch_size=2, images=images, filters=8, latent_channels=8, log=lambda line: None)
    metrics = training.train(tmp_path / "run", "hyperprior", 2, 2, precision="bfloat16", **kwargs)
    assert metrics["precision"] == "mixed_bfloat16" and np.isfinite(metrics["final"]["loss"])
    model = resumed(tmp_path / "run")
    computes = {layer.name: layer.compute_dtype for part in (model.analysis, model.synthesis, model.hyper_analysis,
                                                             model.hyper_synthesis) for layer in part.layers}
    assert {name for name, dtype in computes.items() if dtype == "bfloat16"} == {
        "ga_gdn0", "ga_conv1", "ga_gdn1", "ga_conv2", "ga_gdn2", "gs_igdn0", "gs_conv1", "gs_igdn1", "gs_conv2",
        "gs_igdn2"}
    assert model.hyperprior.compute_dtype == "float32" and all(v.dtype == "float32" for v in model.weights)
    coder = Coder.load(tmp_path / "run" / "codec")
    assert {layer.compute_dtype for part in (coder.model.analysis, coder.model.synthesis) for layer in part.layers} \
        == {"float32"}
    assert all(np.array_equal(a, b) for a, b in zip(coder.model.get_weights(), model.get_weights()))
    assert Coder(model).version == Coder(coder.model).version
    image = images[0][:50, :70]
    np.testing.assert_array_equal(coder.decompress(coder.compress(image)), coder.reconstruct(image))
    with pytest.raises(ValueError, match="precision must be 'float32', 'bfloat16' or 'auto' for a codec, got 'float16'"):
        training.train(tmp_path / "fp16", "hyperprior", 2, 2, precision="float16", **kwargs)
