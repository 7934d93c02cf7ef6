"""Start SageMaker's PyTorch serving stack as its inference image does (``serve``: the
sagemaker-pytorch-inference toolkit configures TorchServe and starts it), with two local
changes: TorchServe's config file goes in the working folder (the toolkit writes it to
/etc), and ``pkg_resources`` (gone from recent setuptools; the images have it) is
stood in for by the one function the toolkit uses."""

from __future__ import annotations

import importlib.util
import os
import sys
import types

try:
    import pkg_resources  # noqa: F401
except ImportError:
    shim = types.ModuleType("pkg_resources")

    def resource_filename(package: str, resource: str) -> str:
        spec = importlib.util.find_spec(package)
        assert spec is not None and spec.origin is not None
        return os.path.join(os.path.dirname(spec.origin), resource.lstrip("/"))

    shim.resource_filename = resource_filename  # type: ignore[attr-defined]
    sys.modules["pkg_resources"] = shim

from sagemaker_pytorch_serving_container import serving, torchserve

torchserve.TS_CONFIG_FILE = os.path.join(os.getcwd(), "ts.properties")
serving.main()
