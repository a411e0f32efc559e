"""experiments.cli: the one place a refusal becomes ``error: <one line>`` and exit status 2, and the one way every
entry point reads ``--tracking-uri`` and ``--device``."""

from __future__ import annotations

import pytest
import torch

from bertgen.checkpoint import CheckpointError
from experiments import cli
from experiments.recipes import evaluate
from experiments.launch import launcher as launch, prefetch, rehearse
from experiments.tracking import relocate, sync
from experiments.config.evaluation import EvaluationError
from experiments.grid.document import GridError
from experiments.tracking.store import TrackingUnavailable
from experiments.config.validate import Invalid, Refusal


@pytest.mark.parametrize("error", [Refusal("it: expected that"), GridError("grid.yaml", "train.lr", "expected that"),
                                   EvaluationError("it: expected that"), Invalid("it", "expected that"),
                                   TrackingUnavailable("it: expected that"), CheckpointError("it: expected that")])
def test_every_refusal_is_one_error_line_and_exit_status_2(error, capsys):
    @cli.entry_point
    def main() -> int:
        raise error

    assert main() == cli.EXIT_REFUSED == 2
    err = capsys.readouterr().err
    assert err == f"error: {error}\n" and "expected that" in err


def test_only_the_launcher_turns_an_unforeseen_exception_into_a_refusal(capsys, monkeypatch):
    monkeypatch.delenv("BERTGEN_TRACEBACK", raising=False)

    def body() -> int:
        raise KeyError("surprise")

    assert cli.entry_point(body, unexpected=True)() == cli.EXIT_REFUSED
    assert capsys.readouterr().err.startswith("error: unexpected KeyError: 'surprise'; expected none (a bug")
    with pytest.raises(KeyError):
        cli.entry_point(body)()


def test_a_refusal_keeps_the_exception_type_it_had():
    """Existing ``except ValueError`` / ``except RuntimeError`` clauses still catch the refusals they caught."""
    assert issubclass(GridError, ValueError) and issubclass(EvaluationError, ValueError)
    assert issubclass(TrackingUnavailable, RuntimeError) and issubclass(Invalid, ValueError)


def test_every_entry_point_goes_through_the_one_refusal_handler():
    for module in (launch, evaluate, prefetch, rehearse, relocate, sync):
        assert module.main.__wrapped__ is not None, module.__name__


def test_a_relative_sqlite_uri_is_the_same_file_from_every_command(tmp_path, monkeypatch):
    """The README's ``sqlite:///outputs/mlflow.db`` is read against the working directory and passed on absolute
    (a Slurm job or a local process started elsewhere writes the same store); other URIs are left as they are."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    assert cli.tracking_uri("sqlite:///outputs/mlflow.db", "ignored") == f"sqlite:///{tmp_path}/outputs/mlflow.db"
    assert cli.tracking_uri("http://node:5000", "ignored") == "http://node:5000"
    assert cli.tracking_uri(None, "outputs") == f"sqlite:///{tmp_path.resolve()}/outputs/mlflow.db"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "sqlite:///env.db")
    assert cli.tracking_uri(None, "outputs") == f"sqlite:///{tmp_path}/env.db"


def test_the_sync_command_reads_a_relative_tracking_uri_as_the_others_do(tmp_path, monkeypatch):
    sent_to = []
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(sync, "sync_tree", lambda directory, uri: sent_to.append(uri) or (0, 0, 0))
    assert sync.main([str(tmp_path), "--tracking-uri", "sqlite:///outputs/mlflow.db"]) == cli.EXIT_OK
    assert sent_to == [f"sqlite:///{tmp_path}/outputs/mlflow.db"]


def test_device(monkeypatch):
    assert cli.device("cpu") == "cpu"
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert cli.device(None) == "cpu"
    with pytest.raises(Refusal, match="--device cuda: no CUDA device on this machine"):
        cli.device("cuda")


def test_the_launcher_passes_on_a_relative_sqlite_uri_as_the_other_commands_do(tmp_path, monkeypatch, capsys):
    """``launch --set mlflow.tracking_uri=sqlite:///outputs/mlflow.db`` reaches the store check (and the cells' jobs)
    as the absolute URI ``evaluate --tracking-uri`` gets for the same text (it used to pass on the relative form,
    which a job started in another folder reads as another file)."""
    from types import SimpleNamespace

    monkeypatch.chdir(tmp_path)
    grid = SimpleNamespace(tracking_uri="sqlite:///outputs/mlflow.db", output_root=tmp_path / "outputs")
    checked = []

    def check_tracking(uri):
        checked.append(uri)
        raise TrackingUnavailable("stop here")

    monkeypatch.setattr(launch, "load_selection", lambda *args, **kwargs: (grid, []))
    monkeypatch.setattr(launch.launch_guard, "check_json_files", lambda *args: None)
    monkeypatch.setattr(launch.launch_guard, "check_decoding", lambda *args: None)
    monkeypatch.setattr(launch, "check_cells", lambda *args, **kwargs: ([], []))
    monkeypatch.setattr(launch, "check_tracking", check_tracking)
    assert launch.main(["grid.yaml", "--executor", "debug"]) == cli.EXIT_REFUSED
    assert capsys.readouterr().err == "error: stop here\n"
    assert checked == [f"sqlite:///{tmp_path}/outputs/mlflow.db"]
