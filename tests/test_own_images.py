"""Users' own images: the colour contract, folder layouts with masks, and a detector that sees colour."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from aeguard.data.contract import Crop, Orientation, Preprocessing, looks_colour
from aeguard.data.images import image_size, load_image, load_mask
from aeguard.data.sources import folder_eval_set, folder_training_data, readable_images
from aeguard.errors import BundleError, UsageError
from aeguard.scoring.scorer import Scorer
from tests.bundles import tiny_bundle

RGB = Preprocessing(3, 8, 8)


def save(path, array, mode=None):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(array, mode).save(path)
    return path


def test_rgb_images_keep_their_channels_in_order(tmp_path):
    pixels = np.zeros((8, 8, 3), np.uint8)
    pixels[..., 0], pixels[..., 1], pixels[..., 2] = 10, 128, 250
    array = load_image(save(tmp_path / "c.png", pixels), RGB)
    assert array.shape == (3, 8, 8) and array.dtype == np.float32
    np.testing.assert_allclose(array[:, 0, 0], np.array([10, 128, 250]) / 255, atol=1e-7)


def test_grey_alpha_and_sixteen_bit_images_become_three_equal_channels(tmp_path):
    grey = load_image(save(tmp_path / "g.png", np.full((8, 8), 77, np.uint8)), RGB)
    np.testing.assert_allclose(grey, 77 / 255, atol=1e-7)
    rgba = np.zeros((8, 8, 4), np.uint8)
    rgba[..., 0], rgba[..., 3] = 200, 0  # fully transparent red: alpha is dropped, not composited
    np.testing.assert_allclose(load_image(save(tmp_path / "a.png", rgba), RGB)[0], 200 / 255, atol=1e-7)
    deep = save(tmp_path / "d.png", np.full((8, 8), 65535 // 4, np.uint16))
    array = load_image(deep, RGB)
    assert array.shape == (3, 8, 8)
    np.testing.assert_allclose(array, (65535 // 4) / 65535, atol=1e-6)


def test_grayscale_contract_uses_luma_as_before(tmp_path):
    pixels = np.zeros((8, 8, 3), np.uint8)
    pixels[..., 0] = 255
    array = load_image(save(tmp_path / "red.png", pixels), Preprocessing(1, 8, 8))
    assert array.shape == (1, 8, 8)
    np.testing.assert_allclose(array, round(0.299 * 255) / 255, atol=1 / 255)


def test_center_crop_takes_the_middle_before_resizing(tmp_path):
    wide = np.zeros((10, 30), np.uint8)
    wide[:, 10:20] = 255  # the centre square is white, the sides black
    path = save(tmp_path / "wide.png", wide)
    cropped = load_image(path, Preprocessing(1, 10, 10, Crop.CENTER))
    squashed = load_image(path, Preprocessing(1, 10, 10))
    assert cropped.min() == pytest.approx(1.0)
    assert squashed.min() == pytest.approx(0.0)


def test_bundles_without_colour_or_crop_keys_read_as_before(tmp_path):
    bundle = tiny_bundle(tmp_path / "old")  # the manifest of a 0.2 bundle: channels 1, no crop
    scorer = Scorer(bundle)
    assert scorer.preprocessing == Preprocessing(1, 28, 28, Crop.NONE, Orientation.STORED)
    with pytest.raises(BundleError, match="unknown input orientation"):
        Preprocessing.from_spec({"channels": 1, "height": 4, "width": 4, "orientation": "sideways"})
    with pytest.raises(BundleError, match="unknown input crop"):
        Preprocessing.from_spec({"channels": 1, "height": 4, "width": 4, "crop": "sideways"})
    with pytest.raises(UsageError, match="--color"):
        Preprocessing.of("sepia", 4, 4)


def test_colour_is_told_from_grey_saved_as_rgb():
    grey = np.repeat(np.random.default_rng(0).random((1, 16, 16), np.float32), 3, axis=0)
    assert not looks_colour(grey)
    tinted = grey.copy()
    tinted[0] = np.clip(tinted[0] + 0.2, 0, 1)
    assert looks_colour(tinted)


def photo_with_orientation(path, pixels: np.ndarray, orientation: int):
    """A JPEG storing `pixels` as they are, tagged with an EXIF Orientation (6: a camera held on its side)."""
    exif = Image.Exif()
    exif[0x0112] = orientation
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(pixels).save(path, quality=100, subsampling=0, exif=exif)
    return path


def sideways_photo(path):
    """Stored 8 wide x 4 high with a bright left column, tagged 6: upright it is 4 wide x 8 high, bright on top."""
    stored = np.full((4, 8), 20, np.uint8)
    stored[:, :2] = 235
    return photo_with_orientation(path, stored, 6)


def test_photos_are_read_upright_by_their_exif_tag_and_old_bundles_read_them_as_stored(tmp_path):
    path = sideways_photo(tmp_path / "side.jpg")
    new, old = Preprocessing(1, 8, 4), Preprocessing.from_spec({"channels": 1, "height": 8, "width": 4})
    assert new.orientation is Orientation.EXIF and Preprocessing.from_spec(new.spec()) == new
    assert image_size(path) == (8, 4) and image_size(path, old.orientation) == (4, 8)  # (height, width)
    upright = load_image(path, new)[0]
    assert upright[:2].mean() > 0.85 and upright[3:].mean() < 0.2  # bright on top, as a viewer shows it
    stored = load_image(path, Preprocessing(1, 4, 8, orientation=Orientation.STORED))[0]
    assert stored[:, :2].mean() > 0.85 and stored[:, 3:].mean() < 0.2  # bright on the left, as the file holds it
    pixels = np.asarray(Image.open(path))
    tagged = {tag: photo_with_orientation(tmp_path / f"t{tag}.jpg", pixels, tag) for tag in (1, 3, 8)}
    as_stored = Preprocessing(1, 8, 4, orientation=Orientation.STORED)
    np.testing.assert_array_equal(load_image(tagged[1], new), load_image(tagged[1], as_stored))  # 1: upright already
    half_turn = load_image(tagged[3], Preprocessing(1, 4, 8))[0]
    assert half_turn[:, -2:].mean() > 0.85 and half_turn[:, :5].mean() < 0.2  # 3: bright on the right
    other_way = load_image(tagged[8], new)[0]
    assert other_way[-2:].mean() > 0.85 and other_way[:5].mean() < 0.2  # 8 turns the other way: bright at the bottom


def test_a_mask_is_used_only_when_it_is_the_size_of_its_upright_image(tmp_path):
    """A mask drawn on the photo as a viewer shows it lines up; one of another size is reported, never resized
    onto the wrong pixels."""
    root = write_mvtec(tmp_path / "m", np.random.default_rng(2), size=8)
    sideways_photo(root / "test" / "crack" / "003.jpg")  # upright 4 wide x 8 high, its defect the top two rows
    drawn = np.zeros((8, 4), np.uint8)
    drawn[:2] = 255
    save(root / "ground_truth" / "crack" / "003_mask.png", drawn)
    save(root / "ground_truth" / "spot" / "002_mask.png", np.full((8, 9), 255, np.uint8))  # not spot/002's size
    evaluation, problems = folder_eval_set(root, Preprocessing(1, 8, 8))
    assert evaluation.groups.count("crack") == 4
    photo = evaluation.groups.index("crack") + 3
    assert evaluation.has_mask[photo] and evaluation.masks[photo, :2].all() and not evaluation.masks[photo, 2:].any()
    spot = len(evaluation.groups) - 1
    assert evaluation.groups[spot] == "spot" and not evaluation.has_mask[spot]
    assert len(problems) == 1 and "002_mask.png is 9x8 (width x height) but its image is 8x8" in problems[0]
    _, stored = folder_eval_set(root, Preprocessing(1, 8, 8, orientation=Orientation.STORED))
    assert len(stored) == 2 and "003_mask.png is 4x8 (width x height) but its image is 8x4" in stored[0]


def test_a_mask_marks_a_defect_wherever_it_is_not_zero_whatever_its_encoding(tmp_path):
    """MVTec AD's masks are 0/255; VisA's and numpy's are 0/1 or class numbers, which a threshold at half of 255
    would read as empty masks, their defect pixels counted as normal."""
    region = np.zeros((8, 8), bool)
    region[2:5, 1:4] = True
    classes = np.where(region, 2, 0).astype(np.uint8)
    classes[2, 1] = 1  # two classes of defect in one mask
    encodings = {
        "0-255": Image.fromarray(np.where(region, 255, 0).astype(np.uint8)),
        "0-1": Image.fromarray(region.astype(np.uint8)),
        "classes": Image.fromarray(classes),
        "bilevel": Image.fromarray(region),  # mode "1"
        "red on black": Image.fromarray(np.stack([region * 200, region * 0, region * 0], axis=2).astype(np.uint8)),
        "sixteen-bit": Image.fromarray(region.astype(np.uint16) * 7),
    }
    root = write_mvtec(tmp_path / "m", np.random.default_rng(3), size=8, masks=False)
    (root / "ground_truth" / "crack").mkdir(parents=True)
    for i, mask in enumerate(encodings.values()):
        image = root / "test" / "crack" / f"{i:03d}.png"
        save(image, np.full((8, 8), 100, np.uint8))
        mask.save(root / "ground_truth" / "crack" / f"{i:03d}_mask.png")
    evaluation, problems = folder_eval_set(root, Preprocessing(1, 8, 8))
    assert not problems
    first = evaluation.groups.index("crack")
    for i, name in enumerate(encodings):
        assert evaluation.has_mask[first + i] and (evaluation.masks[first + i] == region).all(), name
    # resized to the model's size as the image is: 0/1 and 0/255 give the same pixels
    small = Preprocessing(1, 4, 4)
    path = tmp_path / "mask-0-1.png"
    encodings["0-1"].save(path)
    encodings["0-255"].save(tmp_path / "mask-0-255.png")
    assert load_mask(path, small).shape == (4, 4) and load_mask(path, small).any()
    assert (load_mask(path, small) == load_mask(tmp_path / "mask-0-255.png", small)).all()


def test_a_folder_is_read_into_bytes_one_image_at_a_time_and_into_floats_from_a_16_bit_one_on(tmp_path):
    import tracemalloc

    rng = np.random.default_rng(4)
    paths = [save(tmp_path / f"{i:03d}.png", rng.integers(0, 256, (64, 64, 3), dtype=np.uint8)) for i in range(60)]
    prep = Preprocessing(3, 64, 64)
    tracemalloc.start()
    stack, errors = readable_images(paths, prep)
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    floats = 60 * 3 * 64 * 64 * 4  # what holding every decoded image as float32 costs
    assert stack.dtype == np.uint8 and not errors
    assert peak < 0.5 * floats, peak  # the uint8 stack (a quarter of that) and one image's work
    np.testing.assert_array_equal(stack / np.float32(255), np.stack([load_image(path, prep) for path in paths]))
    sixteen = save(tmp_path / "030b.png", rng.integers(0, 65536, (64, 64), dtype=np.uint16))
    broken = tmp_path / "031b.png"
    broken.write_bytes(b"not a png")
    mixed = [*paths[:30], sixteen, broken, *paths[30:]]
    stack, errors = readable_images(mixed, prep)
    assert stack.dtype == np.float32 and len(stack) == 61 and len(errors) == 1 and "031b.png" in errors[0]
    readable = [path for path in mixed if path != broken]
    np.testing.assert_array_equal(stack, np.stack([load_image(path, prep) for path in readable]))


def write_mvtec(root, rng, size=16, n_train=12, masks=True):
    """A tiny MVTec AD folder: grey noise, defects as bright squares with their masks; one defect lacks a mask."""

    def surface():
        return (rng.random((size, size)) * 80 + 60).astype(np.uint8)

    for i in range(n_train):
        save(root / "train" / "good" / f"{i:03d}.png", surface())
    for i in range(3):
        save(root / "test" / "good" / f"{i:03d}.png", surface())
    for kind in ("crack", "spot"):
        for i in range(3):
            image, mask = surface(), np.zeros((size, size), np.uint8)
            image[4:8, 4:8], mask[4:8, 4:8] = 255, 255
            save(root / "test" / kind / f"{i:03d}.png", image)
            if masks and not (kind == "spot" and i == 2):
                save(root / "ground_truth" / kind / f"{i:03d}_mask.png", mask)
    return root


def test_mvtec_layout_is_read_with_its_masks(tmp_path):
    root = write_mvtec(tmp_path / "bottle", np.random.default_rng(0))
    data = folder_training_data(root, None, 0.25, seed=0)
    assert len(data.train) + len(data.validation) == 12
    assert data.source["layout"] == "mvtec" and data.preprocessing.channels == 1
    assert data.train.dtype == np.uint8  # 8-bit images are held as bytes
    evaluation = data.evaluation
    assert evaluation.groups == ["good"] * 3 + ["crack"] * 3 + ["spot"] * 3
    assert evaluation.is_anomaly.tolist() == [0] * 3 + [1] * 6
    assert evaluation.masks.shape == (9, 16, 16)
    assert evaluation.masks[3, 4:8, 4:8].all() and evaluation.masks[3].sum() == 16
    assert not evaluation.masks[:3].any()
    assert evaluation.has_mask.tolist() == [True] * 8 + [False]  # spot/002 has no mask: left out of pixel metrics


def test_test_files_that_cannot_be_used_are_warned_about_at_fit_and_listed_in_the_report(tmp_path, capsys):
    """fit --data evaluates on DIR/test: an unreadable test image or a mask of the wrong size changes what the
    report's figures are of, so it is said at fit (as a training image's is) and listed in report.json/.md."""
    root = write_mvtec(tmp_path / "bottle", np.random.default_rng(0))
    (root / "test" / "crack" / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\nnot a png")
    save(root / "ground_truth" / "crack" / "001_mask.png", np.full((16, 17), 255, np.uint8))
    data = folder_training_data(root, None, 0.25, seed=0)
    warned = capsys.readouterr().err
    assert "broken.png: not a recognised image format" in warned
    assert "001_mask.png is 17x16 (width x height) but its image is 16x16" in warned
    assert len(data.evaluation.not_used) == 2 and data.evaluation.groups.count("crack") == 3

    assert any("broken.png" in message for message in data.evaluation.not_used)
    save(root / "test" / "loose.png", np.zeros((16, 16), np.uint8))  # in no group: it has no label
    save(root / "ground_truth" / "spot" / "002.png", np.zeros((16, 16), np.uint8))  # named as no image's mask
    evaluation, problems = folder_eval_set(root, data.preprocessing)
    assert problems[0].endswith("loose.png: not in test/good/ or a test/<defect>/ folder, so it has no label")
    assert problems[-1].endswith("spot/002.png: the mask of no image in spot/ (a mask is named <image name>_mask.png)")
    assert evaluation.not_used == problems and len(problems) == 4
    # the report lists them: test_localization.py's test_a_detector_evaluates_an_mvtec_folder_as_...


def test_a_test_folder_is_never_trained_on_even_without_train_good(tmp_path):
    """DIR/test/ is evaluated as an MVTec test set whenever it is there; with the training images in DIR/train/
    rather than DIR/train/good/, its anomalies were trained on as normal images, then scored by the model that
    had learned them."""
    root = write_mvtec(tmp_path / "bottle", np.random.default_rng(0))
    for path in (root / "train" / "good").iterdir():
        path.rename(root / "train" / path.name)
    (root / "train" / "good").rmdir()
    data = folder_training_data(root, None, 0.25, seed=0)
    assert data.source["layout"] == "folder" and len(data.train) + len(data.validation) == 12  # train/ alone
    assert data.evaluation.groups == ["good"] * 3 + ["crack"] * 3 + ["spot"] * 3


def test_validation_good_is_the_held_out_set_and_every_training_image_is_trained_on(tmp_path, capsys):
    """MVTec AD 2's DIR/validation/good/ sets the threshold instead of a random share of the training images,
    in either layout; an empty one is an error, not a silent fall back to the random share."""
    from aeguard.errors import DataNotFoundError

    root = write_mvtec(tmp_path / "bottle", np.random.default_rng(0))
    for i in range(5):
        save(root / "validation" / "good" / f"{i:03d}.png", np.full((16, 16), 40 + i, np.uint8))
    data = folder_training_data(root, None, 0.25, seed=0)
    assert len(data.train) == 12 and len(data.validation) == 5 and data.source["validation"] == "validation/good"
    assert sorted(data.validation[:, 0, 0, 0].tolist()) == [40, 41, 42, 43, 44]
    assert "threshold is set on the 5 images of" in capsys.readouterr().err
    held_out = folder_training_data(write_mvtec(tmp_path / "plain", np.random.default_rng(0)), None, 0.25, seed=0)
    assert (len(held_out.train), len(held_out.validation), held_out.source["validation"]) == (9, 3, "held out")

    for path in (root / "train" / "good").iterdir():  # any folder: validation/good is not trained on there either
        path.rename(root / path.name)
    for folder in (root / "train" / "good", root / "train"):
        folder.rmdir()
    data = folder_training_data(root, None, 0.25, seed=0)
    assert (len(data.train), len(data.validation), data.source["layout"]) == (12, 5, "folder")

    for path in (root / "validation" / "good").iterdir():
        path.unlink()
    with pytest.raises(DataNotFoundError, match="validation/good holds no readable images"):
        folder_training_data(root, None, 0.25, seed=0)


def test_the_normal_anomaly_layout_still_works_and_takes_masks(tmp_path):
    rng = np.random.default_rng(1)
    for i in range(4):
        save(tmp_path / "d" / f"train{i}.png", rng.integers(0, 255, (8, 8), dtype=np.uint8))
        save(tmp_path / "d" / "normal" / f"n{i}.png", rng.integers(0, 255, (8, 8), dtype=np.uint8))
        save(tmp_path / "d" / "anomaly" / f"a{i}.png", rng.integers(0, 255, (8, 8), dtype=np.uint8))
    save(tmp_path / "d" / "ground_truth" / "anomaly" / "a0_mask.png", np.full((8, 8), 255, np.uint8))
    data = folder_training_data(tmp_path / "d", None, 0.25, seed=0)
    assert len(data.train) + len(data.validation) == 4  # normal/, anomaly/ and ground_truth/ are not trained on
    evaluation, problems = folder_eval_set(tmp_path / "d", data.preprocessing)
    assert not problems and evaluation.is_anomaly.sum() == 4
    assert evaluation.has_mask.tolist() == [True] * 4 + [True, False, False, False]


def hue_folder(root, rng, size=16, n=60, n_test=30):
    """Normal images: reddish surfaces of random brightness. Anomalies: the same brightness (luma) per pixel in
    a greenish hue, so that only colour tells them apart."""
    to_yiq = np.array([[0.299, 0.587, 0.114], [0.596, -0.274, -0.322], [0.211, -0.523, 0.312]])

    def surface(turn: float):
        base = rng.uniform(0.35, 0.65) + 0.05 * rng.standard_normal((size, size))
        yiq = np.stack([base, np.full_like(base, 0.12), np.full_like(base, 0.05)], axis=-1)
        c, s = np.cos(turn), np.sin(turn)
        i, q = yiq[..., 1].copy(), yiq[..., 2].copy()
        yiq[..., 1], yiq[..., 2] = c * i - s * q, s * i + c * q
        rgb = np.clip(yiq @ np.linalg.inv(to_yiq).T, 0, 1)
        return np.rint(rgb * 255).astype(np.uint8)

    for i in range(n):
        save(root / "train" / "good" / f"{i:03d}.png", surface(0.0))
    for i in range(n_test):
        save(root / "test" / "good" / f"{i:03d}.png", surface(0.0))
        save(root / "test" / "hue" / f"{i:03d}.png", surface(np.pi))
    return root


def test_hue_only_anomalies_are_separated_in_rgb_and_invisible_in_grayscale(tmp_path):
    """The issue's case: anomalies that differ in hue at equal brightness. RGB (the default for colour images)
    separates them; the grayscale contract cannot."""
    from aeguard import Detector
    from aeguard.report.metrics import evaluate_scores

    root = hue_folder(tmp_path / "hue", np.random.default_rng(0))
    aurocs, channels = {}, {}
    for color in (None, "grayscale"):
        detector = Detector(model="conv", epochs=20, batch_size=16, seed=0, color=color).fit(root)
        evaluation, _ = folder_eval_set(root, detector.scorer_.preprocessing)
        scores = detector.scorer_.score_many(evaluation.images)
        aurocs[color] = evaluate_scores(scores, evaluation.is_anomaly, detector.threshold_)["auroc"]
        channels[color] = detector.scorer_.channels
    assert channels == {None: 3, "grayscale": 1}
    assert aurocs[None] >= 0.95, aurocs
    assert aurocs["grayscale"] <= 0.75, aurocs


def test_the_texture_benchmark_writes_an_mvtec_folder_with_a_colour_only_stain(tmp_path):
    """The benchmark's folders are what the MVTec reader expects, and its stain keeps each pixel's brightness."""
    pytest.importorskip("skimage")
    from benchmarks.texture_defects import DEFECT_KINDS, luma, turn_hue, write_texture_folder

    write_texture_folder("ihc", tmp_path / "ihc", size=32, n_train=4, n_good=3, per_defect=2)
    data = folder_training_data(tmp_path / "ihc", None, 0.25, seed=0)
    assert data.preprocessing.channels == 3 and len(data.train) + len(data.validation) == 4
    evaluation = data.evaluation
    assert evaluation.groups == ["good"] * 3 + [kind for kind in sorted(DEFECT_KINDS) for _ in range(2)]
    assert evaluation.has_mask.all() and all(evaluation.masks[i].any() for i in range(3, 11))
    surface = np.random.default_rng(0).uniform(0.2, 0.8, (16, 16, 3)).astype(np.float32)
    stained = turn_hue(surface, 1.0)
    assert np.abs(stained - surface).max() > 0.05
    np.testing.assert_allclose(luma(stained), luma(surface), atol=0.02)
    # validation crops come after every other draw: the training and test images stay the same
    write_texture_folder("ihc", tmp_path / "v", size=32, n_train=4, n_good=3, per_defect=2, n_validation=2)
    for name in ("train/good/0003.png", "test/good/0002.png", "test/stain/0001.png"):
        assert (tmp_path / "v" / name).read_bytes() == (tmp_path / "ihc" / name).read_bytes()
    held = folder_training_data(tmp_path / "v", None, 0.25, seed=0)
    assert (len(held.train), len(held.validation), held.source["validation"]) == (4, 2, "validation/good")


def test_without_image_size_large_photos_train_at_most_256_across_and_small_ones_at_their_own_size(tmp_path, capsys):
    rng = np.random.default_rng(3)
    for i in range(3):
        save(tmp_path / "big" / f"{i}.png", rng.integers(0, 255, (300, 450), dtype=np.uint8))
        save(tmp_path / "small" / f"{i}.png", rng.integers(0, 255, (30, 45), dtype=np.uint8))
    big = folder_training_data(tmp_path / "big", None, 0.34, seed=0)
    assert big.preprocessing.shape == (1, 171, 256) and big.train.shape[1:] == (1, 171, 256)
    assert "450x300 (width x height); fitting at 256x171" in capsys.readouterr().err
    assert folder_training_data(tmp_path / "small", None, 0.34, seed=0).preprocessing.shape == (1, 30, 45)
    assert folder_training_data(tmp_path / "big", "300x450", 0.34, seed=0).preprocessing.shape == (1, 300, 450)
    assert "fitting at" not in capsys.readouterr().err
