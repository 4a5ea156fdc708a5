"""Frozen image feature tokens (`mmchat.vision.features`) on EfficientNet-Lite0's real weights.

Real photos (the cat, the coffee) and drawn shapes images: the shapes check what the tokens
are for — colour the deep features pool away, and where a shape is, which the pooled feature
averages away.
"""

from __future__ import annotations

import threading

import pytest
import torch
from PIL import Image, ImageDraw

from mmchat.errors import ConfigError, UserFacingError
from mmchat.vision.features import (COLOUR_SCALE, FeatureSpec, ImageFeatures, cell_colours, colour_tokens,
                                    shared_features)
from mmchat.vision.imagenet import FEATURE_DIM, shared_classifier

pytestmark = pytest.mark.slow

BACKGROUND = (225, 222, 215)
# The indices below (16 grid tokens, then pooled 16 and colour 17) are a 4 x 4 grid's.
GRID4 = FeatureSpec(grid=4)
CELL = GRID4.cell_colour_width  # mean RGB (3), hue histogram (6), occupancy (1)


@pytest.fixture(scope="module")
def classifier(model_cache_dir):
    return shared_classifier(model_cache_dir)


@pytest.fixture
def features(classifier):
    """A fresh instance (own, empty cache) on the shared frozen classifier."""
    return ImageFeatures(classifier, GRID4)


@pytest.fixture
def counted(classifier, monkeypatch):
    """How many images have gone through the network since the fixture was made."""
    seen = []
    original = classifier._pixels

    def counting(images):
        seen.extend(images)
        return original(images)

    monkeypatch.setattr(classifier, "_pixels", counting)
    return seen


def shape_image(fill, box=(80, 80, 150, 150), kind="ellipse") -> Image.Image:
    image = Image.new("RGB", (224, 224), BACKGROUND)
    draw = ImageDraw.Draw(image)
    getattr(draw, kind)(box, fill=fill)
    return image


def test_spec_counts_tokens_and_refuses_bad_values():
    assert FeatureSpec().grid == 3 and FeatureSpec().tokens_per_image == 11  # cells aligned with the thirds
    assert GRID4.tokens_per_image == 18 and (GRID4.pooled_index, GRID4.colour_index) == (16, 17)
    assert FeatureSpec(grid=2).tokens_per_image == 6
    assert GRID4.colour_width == 6 + 64 + 6 + 48 + 16 * GRID4.occupancy
    layout = FeatureSpec(grid=2, colour_bins=3, hue_bins=0, occupancy=1).colour_layout
    assert [(s.start, s.stop) for s in layout.values()] == [(0, 3), (3, 6), (6, 33), (33, 33), (33, 45), (45, 49)]
    assert (GRID4.cell_colour_width, GRID4.token_dim) == (9 + GRID4.occupancy, FEATURE_DIM + 9 + GRID4.occupancy)
    assert (FeatureSpec(cell_hue_bins=0).cell_colour_width, FeatureSpec(cell_hue_bins=0).token_dim) == (0, FEATURE_DIM)
    for bad in ({"grid": 0}, {"grid": 8}, {"grid": 2.5}, {"colour_bins": 1}, {"hue_bins": -1}, {"grid": True},
                {"cell_hue_bins": 37}, {"deep_divisor": 0}, {"deep_divisor": 0.25}, {"occupancy": 2}):
        with pytest.raises(ConfigError) as err:
            FeatureSpec(**bad)
        name, value = next(iter(bad.items()))
        assert name in str(err.value) and repr(value) in str(err.value)
        assert isinstance(err.value, UserFacingError)


def test_encode_gives_k_tokens_of_1280_deep_features_and_cell_colour(features, cat_image, coffee_image):
    width = FEATURE_DIM + CELL
    assert (features.tokens_per_image, features.feature_dim) == (18, width)
    tokens = features.encode([cat_image, coffee_image, cat_image.convert("RGBA")])
    assert tokens.shape == (3, 18, width) and tokens.dtype == torch.float32
    assert not tokens.requires_grad and torch.isfinite(tokens).all()
    torch.testing.assert_close(tokens[0], tokens[2], atol=1e-4, rtol=1e-4)  # alpha dropped
    assert not torch.allclose(tokens[0], tokens[1])
    assert features.encode([]).shape == (0, 18, width)
    # Cell colour only in the grid tokens' trailing entries; the pooled and colour tokens have none.
    assert (tokens[:, 16:, FEATURE_DIM:] == 0).all() and (tokens[:, :16, FEATURE_DIM:] != 0).any()
    tokens = tokens[..., :FEATURE_DIM]
    # Colour token: values only in its leading entries, and a norm within an order of magnitude
    # of the (divided) deep tokens'.
    colour = tokens[:, 17]
    width = features.spec.colour_width
    assert (colour[:, width:] == 0).all() and (colour[:, :width] != 0).any(dim=1).all()
    ratio = colour.norm(dim=1) / tokens[:, 16].norm(dim=1)
    assert ((ratio > 0.5) & (ratio < 10)).all(), ratio


def test_a_coarser_grid_gives_fewer_tokens(classifier, cat_image):
    tokens = ImageFeatures(classifier, FeatureSpec(grid=2)).encode([cat_image])
    assert tokens.shape == (1, 6, FEATURE_DIM + CELL)
    fine = ImageFeatures(classifier, FeatureSpec(grid=7, cell_hue_bins=0)).encode([cat_image])
    assert fine.shape == (1, 51, FEATURE_DIM)
    # The 7 x 7 grid is the feature map itself: its mean is the pooled token.
    torch.testing.assert_close(fine[0, :49].mean(0), fine[0, 49], atol=1e-5, rtol=1e-5)


def test_encode_refuses_what_is_not_a_list_of_images(features, cat_image):
    with pytest.raises(TypeError, match="list of images"):
        features.encode(cat_image)
    with pytest.raises(TypeError, match="str"):
        features.encode([cat_image, "cat.jpg"])


def test_pooled_token_is_the_classifiers_features_scaled(features, classifier, cat_image, coffee_image):
    tokens = features.encode([cat_image, coffee_image])
    divisor = features.spec.deep_divisor
    assert divisor == 4
    torch.testing.assert_close(tokens[:, 16, :FEATURE_DIM] * divisor, classifier.features([cat_image, coffee_image]),
                               atol=1e-5, rtol=1e-5)
    undivided = ImageFeatures(classifier, FeatureSpec(grid=4, deep_divisor=1)).encode([cat_image])
    torch.testing.assert_close(undivided[0, :17, :FEATURE_DIM], tokens[0, :17, :FEATURE_DIM] * divisor,
                               atol=1e-5, rtol=1e-5)
    # The colour entries do not scale with the deep ones.
    torch.testing.assert_close(undivided[0, 17], tokens[0, 17])
    torch.testing.assert_close(undivided[0, :16, FEATURE_DIM:], tokens[0, :16, FEATURE_DIM:])


def test_encoding_is_deterministic(classifier, features, cat_image, coffee_image):
    first = features.encode([cat_image, coffee_image])
    again = ImageFeatures(classifier, GRID4).encode([coffee_image, cat_image])
    torch.testing.assert_close(first, again.flip(0), atol=1e-5, rtol=1e-5)


def test_each_distinct_image_is_computed_once(features, counted, cat_image, coffee_image):
    first = features.encode([cat_image, coffee_image, cat_image])
    assert len(counted) == 2  # the repeated cat within one call too
    copy_of_cat = cat_image.copy()  # another object, same content: same key
    second = features.encode([coffee_image, copy_of_cat])
    assert len(counted) == 2
    assert torch.equal(second[0], first[1]) and torch.equal(second[1], first[0])
    second.zero_()  # the caller's tensor is its own
    assert torch.equal(features.encode([cat_image])[0], first[0]) and len(counted) == 2
    features.encode([cat_image.rotate(90)])
    assert len(counted) == 3


def test_the_cache_forgets_the_least_recently_used(classifier, counted, cat_image, coffee_image):
    features = ImageFeatures(classifier, GRID4, cache_size=2)
    red = shape_image((220, 30, 30))
    features.encode([cat_image, coffee_image])
    features.encode([cat_image])  # the cat is now the most recent
    features.encode([red])  # evicts the coffee
    assert len(counted) == 3
    features.encode([cat_image, red])
    assert len(counted) == 3
    features.encode([coffee_image])
    assert len(counted) == 4


def test_concurrent_requests_compute_an_image_once(features, counted, cat_image, coffee_image):
    results, barrier = [], threading.Barrier(4)

    def ask():
        barrier.wait()
        results.append(features.encode([cat_image, coffee_image]))

    threads = [threading.Thread(target=ask) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len(counted) == 2 and len(results) == 4
    assert all(torch.equal(result, results[0]) for result in results)


def test_colour_token_layout_on_plain_colours():
    spec = GRID4
    layout = spec.colour_layout

    def token(*rgb):
        return colour_tokens(torch.tensor(rgb).view(1, 3, 1, 1).expand(1, 3, 32, 32), spec)[0] / COLOUR_SCALE

    red = token(1.0, 0.0, 0.0)
    torch.testing.assert_close(red[layout["mean"]], torch.tensor([1.0, 0.0, 0.0]))
    assert red[layout["std"]].abs().max() < 1e-6 and red[layout["cells"]].abs().max() < 1e-6
    rgb_histogram = torch.zeros(64)
    rgb_histogram[3 * 16] = 1.0  # the top red bin, the bottom green and blue ones
    torch.testing.assert_close(red[layout["rgb_histogram"]], rgb_histogram)
    torch.testing.assert_close(red[layout["hue_histogram"]], torch.tensor([1.0, 0, 0, 0, 0, 0]))
    torch.testing.assert_close(token(0.1, 0.2, 0.9)[layout["hue_histogram"]].argmax(), torch.tensor(4))  # blue
    # Orange lies half-way between the red and yellow centres; grey has no hue at all.
    half = 0.5**0.5
    torch.testing.assert_close(token(1.0, 0.5, 0.0)[layout["hue_histogram"]], torch.tensor([half, half, 0, 0, 0, 0]))
    assert token(0.5, 0.5, 0.5)[layout["hue_histogram"]].abs().max() == 0
    # A shade between two RGB bin centres shares its weight between them (square roots of 1/2).
    torch.testing.assert_close(token(0.5, 0.0, 0.0)[layout["rgb_histogram"]][[16, 32]], torch.tensor([half, half]))
    assert (red[spec.colour_width :] == 0).all()


def test_cell_colour_says_which_colour_stands_in_which_cell():
    """A red disc in the top-left cell and a blue one in the bottom-right, on grey: each cell's
    hue histogram names its own disc's colour; cells with only background have no hue."""
    spec = GRID4
    image = Image.new("RGB", (224, 224), (200, 200, 200))
    draw = ImageDraw.Draw(image)
    draw.ellipse((8, 8, 48, 48), fill=(230, 20, 20))
    draw.ellipse((176, 176, 216, 216), fill=(20, 40, 230))
    rgb = torch.tensor(list(image.getdata()), dtype=torch.float32).T.reshape(1, 3, 224, 224) / 255
    cells = cell_colours(rgb, spec) / COLOUR_SCALE
    assert cells.shape == (1, 16, CELL)
    hue = cells[0, :, 3:9]
    assert hue[0].argmax() == 0 and hue[15].argmax() == 4  # bins: red, yellow, green, cyan, blue, magenta
    assert hue[0, 0] > 0.5 and hue[15, 4] > 0.5
    assert hue[[i for i in range(16) if i not in (0, 15)]].abs().max() == 0
    # Mean RGB relative to the image's: red above in r, blue above in b.
    assert cells[0, 0, 0] > 0 > cells[0, 0, 2] and cells[0, 15, 2] > 0 > cells[0, 15, 0]


def test_colour_token_separates_colours_and_keeps_two_reds_close(features):
    red, other_red = shape_image((220, 30, 30)), shape_image((190, 20, 45), box=(75, 85, 155, 150))
    blue, green = shape_image((30, 40, 210)), shape_image((30, 170, 50))
    colour = features.encode([red, other_red, blue, green])[:, 17]
    distance = torch.cdist(colour, colour)
    reds, red_blue, red_green, blue_green = distance[0, 1], distance[0, 2], distance[0, 3], distance[2, 3]
    assert reds < 0.4 * min(red_blue, red_green, blue_green), distance


def test_colour_token_groups_by_colour_across_shapes_shades_and_places(features):
    shades = {"red": [(220, 30, 30), (185, 20, 45)], "blue": [(30, 40, 210), (60, 90, 230)],
              "green": [(30, 170, 50), (80, 200, 60)]}
    places = [("ellipse", (40, 50, 120, 130)), ("rectangle", (110, 90, 190, 170))]
    images, names = [], []
    for name, pair in shades.items():
        for fill, (kind, box) in zip(pair, places):
            images.append(shape_image(fill, box=box, kind=kind))
            names.append(name)
    tokens = features.encode(images)
    same = torch.tensor([[a == b for b in names] for a in names])
    others = ~torch.eye(len(names), dtype=torch.bool)

    # Which colours an image holds: the token without its per-cell block (that one says where).
    which = tokens[:, 17, : features.spec.colour_layout["cells"].start]
    colour = torch.cdist(which, which)
    assert colour[same & others].max() < 0.75 * colour[~same].min(), colour

    # Why the token exists: ImageNet's pooled feature groups these by shape, not by colour.
    pooled = torch.cdist(tokens[:, 16], tokens[:, 16]).masked_fill(~others, float("inf"))
    right = sum(names[i] == names[j] for i, j in enumerate(pooled.argmin(1).tolist()))
    assert right < len(names) / 2, pooled


def test_colour_token_says_where_each_colour_is(features):
    def pair(left_fill, right_fill):
        image = shape_image(left_fill, box=(30, 80, 90, 140))
        ImageDraw.Draw(image).ellipse((134, 80, 194, 140), fill=right_fill)
        return image

    # Same pixels, colours swapped: only the per-cell colour means can tell these apart.
    red_blue, blue_red = pair((220, 30, 30), (30, 40, 210)), pair((30, 40, 210), (220, 30, 30))
    shaded = pair((205, 40, 35), (40, 50, 200))
    colour = features.encode([red_blue, blue_red, shaded])[:, 17]
    assert (colour[0] - colour[1]).norm() > 2 * (colour[0] - colour[2]).norm(), colour


def test_spatial_tokens_tell_left_from_right(features):
    # The same square in the top-left cells in one image, in the top-right cells in the other.
    left = shape_image((40, 40, 40), box=(8, 8, 64, 64), kind="rectangle")
    right = shape_image((40, 40, 40), box=(160, 8, 216, 64), kind="rectangle")
    tokens = features.encode([left, right])
    cells = (tokens[0, :16] - tokens[1, :16]).norm(dim=1).view(4, 4)
    near = torch.stack([cells[0, 0], cells[0, 3]])  # where either square is
    far = cells[3, 1:3]  # bottom middle, away from both
    assert near.min() > 2 * far.max(), cells
    # The pooled token (one average over the whole map) barely tells them apart.
    assert (tokens[0, 16] - tokens[1, 16]).norm() < near.min()


def test_shared_features_are_one_per_spec_on_the_shared_classifier(model_cache_dir):
    shared = shared_features(model_cache_dir)
    assert shared is shared_features(model_cache_dir, FeatureSpec())
    assert shared.classifier is shared_classifier(model_cache_dir)
    coarse = shared_features(model_cache_dir, FeatureSpec(grid=2))
    assert coarse is not shared and coarse.tokens_per_image == 6


def test_hue_histogram_speaks_for_a_small_shape_and_not_for_stray_pixels():
    """The hue blocks are shares of the chromatic pixels: a 12 x 12 red square on white (0.3% of
    the picture) says "red" at full strength, in the colour token and in its cell; three stray
    red pixels in a grey picture stay under the floor and say almost nothing."""
    spec = GRID4
    hue = spec.colour_layout["hue_histogram"]

    def pixels(image):
        return torch.tensor(list(image.getdata()), dtype=torch.float32).T.reshape(1, 3, 224, 224) / 255

    small = Image.new("RGB", (224, 224), (250, 250, 250))
    ImageDraw.Draw(small).rectangle((20, 20, 31, 31), fill=(220, 30, 30))
    token = colour_tokens(pixels(small), spec)[0] / COLOUR_SCALE
    torch.testing.assert_close(token[hue], torch.tensor([1.0, 0, 0, 0, 0, 0]), atol=0.02, rtol=0)
    cells = cell_colours(pixels(small), spec)[0] / COLOUR_SCALE
    assert cells[0, 3] > 0.95 and cells[1:, 3:].abs().max() == 0

    stray = Image.new("RGB", (224, 224), (128, 128, 128))
    for xy in ((10, 10), (100, 150), (200, 30)):
        stray.putpixel(xy, (230, 20, 20))
    # 3 half-resolution pixels under a floor of 25: sqrt(3 / 25) ~ 0.35; a cell's 1 under 16: ~0.25.
    assert (colour_tokens(pixels(stray), spec)[0] / COLOUR_SCALE)[hue].max() < 0.4
    assert (cell_colours(pixels(stray), spec)[0] / COLOUR_SCALE)[:, 3:9].max() < 0.3


def test_occupancy_says_how_much_of_each_cell_is_coloured():
    """A red square filling the top-left cell of a 4 x 4 grid and one filling a quarter of the
    bottom-right cell: each cell's last entry and the colour token's occupancy map give those
    shares (1 and 1/4; 0 elsewhere), which the hue histograms (shares *of* the coloured pixels)
    cannot tell apart; two squares add up to twice one. `occupancy=0` leaves the entries out."""
    spec = FeatureSpec(grid=4, occupancy=1)
    assert spec.cell_colour_width == 3 + 6 + 1 and spec.colour_layout["occupancy"] == slice(124, 140)
    assert FeatureSpec(grid=4, occupancy=0).cell_colour_width == 9 and FeatureSpec(grid=4, occupancy=0).colour_width == 124

    def pixels(image):
        return torch.tensor(list(image.getdata()), dtype=torch.float32).T.reshape(1, 3, 224, 224) / 255

    image = Image.new("RGB", (224, 224), (250, 250, 250))
    draw = ImageDraw.Draw(image)
    draw.rectangle((0, 0, 55, 55), fill=(220, 30, 30))  # cells are 56 px
    one = colour_tokens(pixels(image), spec)[0, spec.colour_layout["occupancy"]] / COLOUR_SCALE
    draw.rectangle((168, 168, 195, 195), fill=(30, 40, 210))  # a quarter of the last cell
    two = pixels(image)
    cells = cell_colours(two, spec)[0, :, -1] / COLOUR_SCALE
    occupancy = colour_tokens(two, spec)[0, spec.colour_layout["occupancy"]] / COLOUR_SCALE
    expected = torch.zeros(16)
    expected[0], expected[15] = 1.0, 0.25
    torch.testing.assert_close(cells, expected, atol=0.02, rtol=0)
    torch.testing.assert_close(occupancy, expected, atol=0.02, rtol=0)
    torch.testing.assert_close(one, torch.eye(16)[0], atol=0.02, rtol=0)
    # Both cells' hue histograms are full strength: only the occupancy says one is a quarter full.
    hue = cell_colours(two, spec)[0, :, 3:9] / COLOUR_SCALE
    assert hue[0].max() > 0.95 and hue[15].max() > 0.95


def test_a_card_spec_reads_fields_it_lacks_as_they_were_when_it_was_written():
    """Cards record every field; one written before `occupancy` existed (or while the grid
    defaulted to 4) reads as the features its adapter was trained on, not today's defaults."""
    import dataclasses

    assert FeatureSpec.from_card(dataclasses.asdict(FeatureSpec())) == FeatureSpec()
    older = FeatureSpec.from_card({"grid": 4, "colour_bins": 4, "hue_bins": 6, "cell_hue_bins": 6, "deep_divisor": 4})
    assert (older.occupancy, older.token_dim, older.tokens_per_image) == (0, FEATURE_DIM + 9, 18)
    assert FeatureSpec.from_card({}).grid == 4
    with pytest.raises(ConfigError, match="occupancy"):
        FeatureSpec.from_card({"occupancy": 3})
