"""``contrastlab embed``: one row per image, equal to the model's own features, files listed in
row order, and an interrupted run continued from its last saved row."""

import json

import numpy as np
import pytest
import torch
from photos import write_photo_folder

from contrastlab.data.datasets import LazyImageFolder
from contrastlab.data.readers import decode_image, list_image_folder
from contrastlab.eval import embed as embed_module
from contrastlab.eval.embed import EMBEDDINGS, FILES, META, PROGRESS, embed_dataset
from contrastlab.methods import MoCoV2
from contrastlab.precision import autocast

DEVICE = torch.device("cpu")


@pytest.fixture
def photos(tmp_path):
    write_photo_folder(tmp_path / "photos", copies=1, classes=2)  # 16 photos of 8 shapes
    files, _, _ = list_image_folder(tmp_path / "photos")
    return files, [str(f.relative_to(tmp_path / "photos")) for f in files]


def tiny_model() -> MoCoV2:
    torch.manual_seed(0)
    return MoCoV2(queue_size=32, bn_splits=1, channels_last=False).eval()


def fp32(monkeypatch):
    monkeypatch.setattr(
        MoCoV2, "precision_context", lambda self, device: autocast("32-true", "cpu")
    )


def test_rows_are_the_models_features_of_each_file_in_order(photos, tmp_path, monkeypatch):
    fp32(monkeypatch)
    files, names = photos
    model = tiny_model()
    source = {"folder": "photos"}
    dataset = LazyImageFolder(files, None, 37)
    done = embed_dataset(model, dataset, names, tmp_path / "out", DEVICE, source, batch_size=5)
    out = tmp_path / "out"
    assert (done.rows, done.dim, done.started_at) == (16, 512, 0)
    embeddings = np.load(out / EMBEDDINGS)
    assert embeddings.shape == (16, 512) and embeddings.dtype == np.float32
    assert (out / FILES).read_text().splitlines() == names
    with torch.no_grad():  # independently: decode each file, the model's evaluation features
        expected = model.features(torch.stack([decode_image(f, 37) for f in files]))
    np.testing.assert_allclose(embeddings, expected.numpy(), rtol=1e-4, atol=1e-5)
    meta = json.loads((out / META).read_text())
    assert meta["rows"] == 16 and meta["folder"] == "photos" and "np.load" in meta["load"]
    assert sorted(p.name for p in out.iterdir()) == [META, EMBEDDINGS, FILES]  # nothing partial


class Interrupted(Exception):
    pass


def test_an_interrupted_run_continues_from_its_last_saved_row(photos, tmp_path, monkeypatch):
    fp32(monkeypatch)
    files, names = photos
    model, out, source = tiny_model(), tmp_path / "out", {"folder": "photos"}
    decoded = []

    class Stopping(LazyImageFolder):
        def __getitem__(self, index):
            if stop_at is not None and index == stop_at:
                raise Interrupted
            decoded.append(index)
            return super().__getitem__(index)

    stop_at = 11  # inside the third batch of 4: rows 0-7 are saved
    with pytest.raises(Interrupted):
        embed_dataset(model, Stopping(files, None, 37), names, out, DEVICE, source, 4, 0, 0.0)
    assert json.loads((out / PROGRESS).read_text())["rows"] == 8
    assert not (out / EMBEDDINGS).exists()  # only a finished file takes the name
    decoded.clear()
    stop_at = None
    done = embed_dataset(model, Stopping(files, None, 37), names, out, DEVICE, source, 4, 0, 0.0)
    assert done.started_at == 8 and decoded == list(range(8, 16))
    embed_dataset(model, LazyImageFolder(files, None, 37), names, tmp_path / "w", DEVICE, source)
    np.testing.assert_array_equal(np.load(out / EMBEDDINGS), np.load(tmp_path / "w" / EMBEDDINGS))


def test_another_checkpoint_or_file_list_starts_over(photos, tmp_path, monkeypatch):
    fp32(monkeypatch)
    files, names = photos
    out = tmp_path / "out"
    model = tiny_model()
    dataset = LazyImageFolder(files, None, 37)
    with pytest.raises(ValueError, match="15 names for 16 images"):
        embed_dataset(model, dataset, names[:15], out, DEVICE, {})
    array, _ = embed_module._open_rows(out, "other run", 16, 512, names)  # another run's
    embed_module._save_progress(out, array, "other run", 12)  # progress, 12 rows done
    del array
    done = embed_dataset(model, dataset, names, out, DEVICE, {"checkpoint": "b"})
    assert done.started_at == 0
