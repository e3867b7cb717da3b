"""`engine/_optim_state.py`: checkpoints hold the optimizer state in one form (torch's, by index,
with each group's `param_names`) whether FSDP (by name) or DDP (by position) wrote it, and a
resuming run gets it in its own form with parameters matched by name."""
import pytest
import torch
from torch import nn

from timm_backbones.engine._optim_state import resume_state, saved_state


def optimizer(model, reverse=False):
    """AdamW with one group per parameter (as mmengine's paramwise constructors build it), run
    one step so every parameter has state."""
    params = list(model.named_parameters())
    if reverse:
        params = params[::-1]
    groups = [dict(params=[p], lr=0.1 * (i + 1)) for i, (_, p) in enumerate(params)]
    opt = torch.optim.AdamW(groups)
    model(torch.ones(1, 2)).sum().backward()
    opt.step()
    return opt


def names(model):
    return {id(p): n for n, p in model.named_parameters()}


def fsdp_form(opt, model):
    """What `FSDP.optim_state_dict` writes: state and groups by parameter name."""
    state = opt.state_dict()
    by_id = [n for g in opt.param_groups for n in (names(model)[id(p)] for p in g['params'])]
    return dict(state=({by_id[i]: v for i, v in state['state'].items()}),
                param_groups=[dict(g, params=[by_id[i] for i in g['params']])
                              for g in state['param_groups']])


@pytest.fixture
def model():
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(2, 3), nn.Linear(3, 1))


def assert_same_state(a, b):
    assert a.keys() == b.keys()
    for key in a:
        for name, value in a[key].items():
            assert torch.equal(value, b[key][name]), (key, name)


def test_saved_by_position_gets_names(model):
    opt = optimizer(model)
    saved = saved_state(opt.state_dict(), opt, names(model))
    assert [g['param_names'] for g in saved['param_groups']] == \
        [['0.weight'], ['0.bias'], ['1.weight'], ['1.bias']]
    opt.load_state_dict(saved)  # plain torch (and mmengine) still load it by position


def test_fsdp_form_is_saved_as_torch_form(model):
    opt = optimizer(model)
    saved = saved_state(fsdp_form(opt, model), opt, names(model))
    assert_same_state(saved['state'], opt.state_dict()['state'])
    assert [g['params'] for g in saved['param_groups']] == [[0], [1], [2], [3]]


def test_resume_matches_parameters_by_name(model):
    # rule: the resuming optimizer may order its groups and parameters otherwise (another
    # wrapper); each parameter gets its own state and its own group's settings
    source = optimizer(model)
    saved = saved_state(source.state_dict(), source, names(model))
    target = optimizer(model, reverse=True)
    target.load_state_dict(resume_state(saved, target, names(model), by_name=False))
    for group, source_group in zip(target.param_groups, reversed(source.param_groups)):
        assert group['lr'] == source_group['lr']
        param = group['params'][0]
        assert torch.equal(target.state[param]['exp_avg'], source.state[param]['exp_avg'])


def test_resume_by_name_for_fsdp(model):
    opt = optimizer(model)
    saved = saved_state(opt.state_dict(), opt, names(model))
    named = resume_state(saved, opt, names(model), by_name=True)
    assert_same_state(named['state'], fsdp_form(opt, model)['state'])
    assert [g['params'] for g in named['param_groups']] == \
        [['0.weight'], ['0.bias'], ['1.weight'], ['1.bias']]
    assert all('param_names' not in g for g in named['param_groups'])


def test_plain_mmengine_checkpoints_resume_by_position(model):
    # a checkpoint without names (plain mmengine) is matched by position, as torch does
    opt = optimizer(model)
    state = opt.state_dict()
    assert resume_state(state, opt, names(model), by_name=False)['state'].keys() == \
        state['state'].keys()
    named = resume_state(state, opt, names(model), by_name=True)
    assert list(named['state']) == ['0.weight', '0.bias', '1.weight', '1.bias']


def test_other_states_pass_through(model):
    opt = optimizer(model)
    for state in ({}, {'backbone': opt.state_dict()}):  # a rank's empty FSDP state, 2 optimizers
        assert saved_state(state, opt, names(model)) is state
        assert resume_state(state, opt, names(model), by_name=True) is state


def test_mismatch_is_a_clear_error(model):
    opt = optimizer(model)
    saved = saved_state(opt.state_dict(), opt, names(model))
    other = torch.optim.AdamW(model.parameters())  # one group instead of four
    with pytest.raises(ValueError, match=r"cannot resume the optimizer from 'ckpt.pth': its "
                                         r"state has other parameter groups"):
        resume_state(saved, other, names(model), by_name=False, filename='ckpt.pth')
    with pytest.raises(ValueError, match=r"its state has 4 parameter groups, this run's "
                                         r"optimizer 1"):  # no names: by position
        resume_state(opt.state_dict(), other, names(model), by_name=False)
    renamed = {k: f'x.{v}' for k, v in names(model).items()}
    with pytest.raises(ValueError, match=r"parameters in group 0 that this run's optimizer "
                                         r"has not \['0.weight'\].*load_from=.*without --resume"):
        resume_state(saved, opt, renamed, by_name=True, filename='ckpt.pth')
