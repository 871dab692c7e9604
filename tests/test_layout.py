"""The repository layout rules: platform/ stays a plain folder, nothing shadows the standard library."""
import sys
from pathlib import Path

from django.apps import apps

ROOT = Path(__file__).resolve().parent.parent


def test_platform_is_not_a_package():
    assert (ROOT / "platform").is_dir()
    assert not (ROOT / "platform" / "__init__.py").exists()


def test_no_app_is_named_after_a_standard_library_module():
    ours = [config for config in apps.get_app_configs() if str(ROOT) in str(config.path)]
    assert {config.name for config in ours} >= {"tenants", "registry", "embeddings", "routing", "billing"}
    clashes = [config.name for config in ours if config.name.split(".")[0] in sys.stdlib_module_names]
    assert clashes == []


def test_no_top_level_module_is_named_after_a_standard_library_module():
    roots = [ROOT, ROOT / "platform"]
    names = {
        path.stem if path.is_file() else path.name
        for root in roots
        for path in root.iterdir()
        if not path.name.startswith(".") and (path.suffix == ".py" or (path.is_dir() and any(path.glob("*.py"))))
    }
    assert "tenants" in names and "inference" in names
    assert sorted(name for name in names if name in sys.stdlib_module_names) == []
