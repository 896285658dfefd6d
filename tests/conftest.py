import os
import sys
from pathlib import Path

import pytest
from hypothesis import HealthCheck, settings

TOY = Path(__file__).resolve().parent / "toy_pkg"
sys.path.insert(0, str(TOY))
# worker processes started by the suite must import the toy package too
os.environ["PYTHONPATH"] = os.pathsep.join([str(TOY)] + [p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p])

settings.register_profile("repo", derandomize=True, deadline=None, print_blob=True,
                          suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
settings.load_profile("repo")


@pytest.fixture
def toy_env():
    """Environment for subprocesses that must import the toy package."""
    return dict(os.environ)
