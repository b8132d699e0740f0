import importlib
import shutil
from pathlib import Path

import pytest
from PIL import Image

from tests.onnx_models import build_colour_model

# The checkout sits beside ../shared (CI clones it the same way).
SAMPLES = Path(__file__).resolve().parents[2] / "shared" / "testdata" / "exif-samples"


def _importable(module: str) -> bool:
    try:
        importlib.import_module(module)
    except ImportError:
        return False
    return True


# tagger reads HEIC with pillow-heif or its decode-only twin pi-heif; without either it skips .heic files.
needs_heif = pytest.mark.skipif(not (_importable("pillow_heif") or _importable("pi_heif")),
                                reason='reading HEIC needs pillow-heif: pip install ".[heif]"')


@pytest.fixture(autouse=True)
def tagger_home(tmp_path, monkeypatch):
    """Every test gets its own empty model store."""
    home = tmp_path / "tagger-home"
    monkeypatch.setenv("TAGGER_HOME", str(home))
    monkeypatch.delenv("TAGGER_MODEL", raising=False)
    return home


@pytest.fixture(scope="session")
def samples() -> Path:
    if not SAMPLES.is_dir():
        pytest.fail(f"camera samples not found at {SAMPLES}: ../shared must sit beside the checkout")
    return SAMPLES


@pytest.fixture(scope="session")
def colour_model(tmp_path_factory) -> Path:
    return build_colour_model(tmp_path_factory.mktemp("models") / "colours.onnx")


def solid_photo(path: Path, colour, size=(64, 48), fmt=None) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", size, colour).save(path, fmt)
    return path


@pytest.fixture
def photo_tree(tmp_path, samples) -> Path:
    """A folder of known-colour photos plus two real camera JPEGs."""
    root = tmp_path / "photos"
    solid_photo(root / "red.jpg", (250, 5, 5))
    solid_photo(root / "nested" / "blue.PNG", (5, 5, 250))
    solid_photo(root / "nested" / "deeper" / "green.webp", (5, 250, 5))
    shutil.copy(samples / "jpg" / "Canon_40D.jpg", root / "Canon_40D.jpg")
    shutil.copy(samples / "jpg" / "gps" / "DSCN0010.jpg", root / "nested" / "DSCN0010.jpg")
    return root
