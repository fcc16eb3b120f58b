import numpy as np
import pytest
from PIL import Image

from aeguard.data.contract import Preprocessing
from aeguard.data.images import iter_image_paths, load_image
from aeguard.errors import DataNotFoundError, ImageError


def test_grayscale_8bit_maps_to_unit_range(tmp_path):
    pixels = np.array([[0, 128], [255, 64]], dtype=np.uint8)
    Image.fromarray(pixels).save(tmp_path / "a.png")
    array = load_image(tmp_path / "a.png", Preprocessing(1, 2, 2))
    assert array.shape == (1, 2, 2) and array.dtype == np.float32
    np.testing.assert_allclose(array[0], pixels / 255.0, atol=1e-7)


def test_16bit_uses_its_full_range(tmp_path):
    pixels = np.array([[0, 65535], [32768, 1000]], dtype=np.uint16)
    Image.fromarray(pixels).save(tmp_path / "deep.png")
    array = load_image(tmp_path / "deep.png", Preprocessing(1, 2, 2))
    np.testing.assert_allclose(array[0], pixels / 65535.0, atol=1e-6)


@pytest.mark.parametrize("mode", ["RGB", "RGBA", "P", "1", "LA", "CMYK"])
def test_any_mode_becomes_one_channel(mode):
    image = Image.new("RGB", (10, 6), (200, 30, 30)).convert(mode)
    array = Preprocessing(1, 4, 5).to_array(image)
    assert array.shape == (1, 4, 5)
    assert 0.0 <= array.min() and array.max() <= 1.0


def test_resize_to_model_size(tmp_path):
    Image.new("L", (100, 40), 255).save(tmp_path / "wide.jpg")
    array = load_image(tmp_path / "wide.jpg", Preprocessing(1, 28, 28))
    assert array.shape == (1, 28, 28)
    assert array.min() > 0.95


@pytest.mark.parametrize(
    "content, reason",
    [(b"", "empty file"), (b"hello", "not a recognised image"), (None, "cannot decode")],
)
def test_broken_files_raise_image_error_naming_the_file(tmp_path, content, reason):
    path = tmp_path / "broken.png"
    if content is None:  # a real PNG cut in half
        Image.fromarray(np.zeros((64, 64), np.uint8) + 7).save(path)
        path.write_bytes(path.read_bytes()[:60])
    else:
        path.write_bytes(content)
    with pytest.raises(ImageError, match=reason) as info:
        load_image(path, Preprocessing(1, 28, 28))
    assert str(path) in str(info.value)


def test_pixel_limit(tmp_path):
    Image.new("L", (50, 50)).save(tmp_path / "big.png")
    with pytest.raises(ImageError, match="pixel limit"):
        load_image(tmp_path / "big.png", Preprocessing(1, 28, 28), max_pixels=1000)


def test_paths_from_files_folders_and_globs(tmp_path):
    (tmp_path / "a" / "b").mkdir(parents=True)
    for name in ("a/1.png", "a/b/2.jpg", "a/notes.txt", "c.bmp"):
        (tmp_path / name).write_bytes(b"x")
    found = list(iter_image_paths([tmp_path / "a"]))
    assert found == [tmp_path / "a/1.png", tmp_path / "a/b/2.jpg"]
    assert list(iter_image_paths([str(tmp_path / "*.bmp")])) == [tmp_path / "c.bmp"]
    # a file named explicitly is kept whatever its suffix, so it gets reported if it is not an image
    assert list(iter_image_paths([tmp_path / "a/notes.txt"])) == [tmp_path / "a/notes.txt"]
    assert list(iter_image_paths([tmp_path / "nope"])) == [tmp_path / "nope"]  # reported by the loader
    with pytest.raises(DataNotFoundError, match="matches no file"):
        list(iter_image_paths([str(tmp_path / "*.gif")]))


@pytest.mark.parametrize(
    ("pixels", "reason"),
    [
        (np.full((6, 6), 200.0, np.float32), "float pixel values must lie in 0.0-1.0, this image holds 200.0 to 200.0"),
        (np.full((6, 6), -0.5, np.float32), "float pixel values must lie in 0.0-1.0"),
        (np.full((6, 6), 70000, np.int32), "32-bit integer pixel values must lie in 0-65535"),
    ],
)
def test_pixels_outside_their_modes_range_are_refused_not_clipped(tmp_path, pixels, reason):
    """Clipping would score a white square in place of the image: a float TIFF of raw counts is an error."""
    path = tmp_path / "raw.tif"
    Image.fromarray(pixels).save(path)
    with pytest.raises(ImageError, match=reason):
        load_image(path, Preprocessing(1, 6, 6))
    inside = tmp_path / "inside.tif"
    Image.fromarray(np.full((6, 6), 0.25 if pixels.dtype == np.float32 else 16384, pixels.dtype)).save(inside)
    np.testing.assert_allclose(load_image(inside, Preprocessing(1, 6, 6)), 0.25, atol=1e-4)


def test_a_cielab_tiff_reads_as_grey_and_as_colour(tmp_path):
    path = tmp_path / "lab.tif"
    Image.fromarray(np.full((6, 6, 3), 180, np.uint8)).convert("LAB").save(path)
    assert Image.open(path).mode == "LAB"
    grey, colour = load_image(path, Preprocessing(1, 6, 6)), load_image(path, Preprocessing(3, 6, 6))
    assert grey.shape == (1, 6, 6) and colour.shape == (3, 6, 6)
    np.testing.assert_allclose(grey, 180 / 255, atol=3 / 255)
