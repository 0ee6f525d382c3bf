"""The Python API is as quiet as the CLI: no library logs while loading, the libraries' settings restored."""

import warnings

from diffusers.utils import logging as diffusers_logging

from unziplora.models.base import BaseModel
from unziplora.models.loading import quiet_libraries


def test_loading_prints_no_library_noise_and_restores_their_verbosity(tiny_base, capfd):
    diffusers_logging.set_verbosity_info()
    try:
        BaseModel.resolve(tiny_base).load()
        assert diffusers_logging.get_verbosity() == diffusers_logging.INFO  # the user's setting is back
    finally:
        diffusers_logging.set_verbosity_warning()
    err = capfd.readouterr().err
    assert "torchvision" not in err and "Loading" not in err, err


def test_our_own_warnings_still_show():
    with quiet_libraries(), warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        warnings.warn("unziplora says something", UserWarning)
    assert [str(w.message) for w in caught] == ["unziplora says something"]
