import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).parent))
torch.set_num_threads(2)

import pytest  # noqa: E402


@pytest.fixture(scope="session")
def ray_local():
    """One local Ray instance (2 CPUs) shared by every test that needs it (starting Ray
    costs tens of seconds). Ray is in the test extra."""
    ray = pytest.importorskip("ray", reason="ray is in the test extra; install it to run this")
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    yield ray
    ray.shutdown()
