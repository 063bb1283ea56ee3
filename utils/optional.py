"""Optional packages (requirements-extra.txt), imported only by the feature that needs them.

    ort = require('onnxruntime', feature='running x.onnx')   # the module, or a one-line MissingPackage error

``MissingPackage`` is a ValueError, so the scripts' ``run_cli`` ends the program with its one line.
"""
import importlib


class MissingPackage(ValueError):
    """An optional package a feature needs is not installed (or fails to import)."""


def require(module, package=None, feature=None):
    """Import ``module``; if it is absent, raise MissingPackage naming the pip ``package`` (default: module)."""
    package = package or module.split('.')[0]
    what = f'{feature} needs' if feature else 'this feature needs'
    try:
        return importlib.import_module(module)
    except ModuleNotFoundError as e:
        if e.name and module != e.name and not module.startswith(e.name + '.'):  # a dependency of it is absent
            raise MissingPackage(f'{what} the {package} package, which is installed but cannot import its '
                                 f'dependency {e.name}') from None
        raise MissingPackage(f'{what} the {package} package, which is not installed (pip install {package})') \
            from None
    except ImportError as e:  # installed but broken (e.g. a shared library fails to load)
        first = str(e).strip().splitlines()[0][:160] if str(e).strip() else type(e).__name__
        raise MissingPackage(f'{what} the {package} package, which is installed but fails to import '
                             f'({first}); reinstall it (pip install --force-reinstall {package})') from None
