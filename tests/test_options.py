"""`_options.py`: TimmBackbone's option names and the checks of its non-shape options."""
import pytest

from timm_backbones import TimmBackbone
from timm_backbones._options import OPTIONS, check_bool, check_pretrained, compile_kwargs


def test_options_list_matches_the_signature():
    # _options.OPTIONS (unknown-option messages, feature_specs(cfg)) lists exactly
    # TimmBackbone's keyword arguments, each once
    import inspect

    params = inspect.signature(TimmBackbone.__init__).parameters
    named = [n for n, p in params.items() if n != 'self' and p.kind is not p.VAR_KEYWORD]
    assert sorted(OPTIONS) == sorted(named) and len(set(OPTIONS)) == len(OPTIONS)



def test_option_checks_name_the_value_and_the_fix(tmp_path):
    with pytest.raises(TypeError, match=r"norm_eval must be True or False, got 'yes'.*without "
                                        r'quotes'):
        check_bool('norm_eval', 'yes')
    assert check_pretrained(tmp_path) == str(tmp_path)  # os.PathLike: a path
    with pytest.raises(TypeError, match="pretrained must be False, True or a file path, got ''"):
        check_pretrained('')
    assert compile_kwargs(True) == {} and compile_kwargs(False) is None
    with pytest.raises(TypeError, match=r"unknown torch.compile argument\(s\) \['modes'\]"):
        compile_kwargs(dict(modes='max-autotune'))
