"""serving.app without a cluster: argument checks, deployment options from the spec, and the Serve
config that `serve deploy` reads."""

from __future__ import annotations

import shutil

import pytest

from serving.app import IMPORT_PATH, BuildArgs, base_url, build_app, deployment_options, serve_config
from serving.config import ServeSection
from tests.unit.test_serving_checkpoints import classifier_checkpoint
from trainers.errors import CheckpointError, UserError


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    return classifier_checkpoint(tmp_path_factory.mktemp("app"))


def test_fixed_replicas_and_limits():
    opts = deployment_options(ServeSection(min_replicas=2, max_replicas=2, max_queued_requests=10,
                                           num_cpus_per_replica=0.5, graceful_shutdown_timeout_s=7))
    assert opts["num_replicas"] == 2 and "autoscaling_config" not in opts
    assert opts["max_queued_requests"] == 10 and opts["max_ongoing_requests"] == 256
    assert opts["ray_actor_options"] == {"num_cpus": 0.5, "num_gpus": 0.0}
    assert opts["graceful_shutdown_timeout_s"] == 7


def test_autoscaling_when_the_range_is_open():
    opts = deployment_options(ServeSection(min_replicas=0, max_replicas=4, target_ongoing_requests=2))
    assert "num_replicas" not in opts
    assert opts["autoscaling_config"] == {
        "min_replicas": 0, "max_replicas": 4, "initial_replicas": 1, "target_ongoing_requests": 2.0,
    }


def test_options_are_accepted_by_serve():
    from ray import serve

    from serving.deployment import ModelServer

    for spec in (ServeSection(), ServeSection(min_replicas=1, max_replicas=3)):
        deployment = ModelServer.options(**deployment_options(spec))
        assert deployment.max_ongoing_requests == spec.max_ongoing_requests
    assert isinstance(deployment, serve.Deployment)


def test_build_app_binds_the_absolute_checkpoint(checkpoint, monkeypatch):
    from ray.serve import Application

    monkeypatch.chdir(checkpoint.parent)
    app = build_app({"checkpoint": checkpoint.name, "serve": {"max_batch_size": 4, "max_replicas": 3}})
    assert isinstance(app, Application)
    deployment = app._bound_deployment  # no public getter for what an Application was bound with
    path, serve_json = deployment.init_args
    assert path == str(checkpoint.resolve())  # replicas run in another working directory
    assert ServeSection.model_validate(serve_json).max_batch_size == 4
    assert deployment._deployment_config.autoscaling_config.max_replicas == 3


@pytest.mark.parametrize(
    ("args", "needle"),
    [
        ({}, "checkpoint: Field required"),
        ({"checkpoint": "x", "port": 1}, "port: Extra inputs are not permitted"),
        ({"checkpoint": "x", "serve": {"max_batch_sise": 4}}, "serve.max_batch_sise"),
        ({"checkpoint": "x", "serve": {"port": 0}}, "serve.port"),
    ],
)
def test_bad_args_are_user_errors(args, needle):
    with pytest.raises(UserError, match="invalid args") as info:
        build_app(args)
    assert needle in str(info.value)


def test_missing_or_partial_checkpoint_fails_before_deploying(tmp_path, checkpoint):
    with pytest.raises(CheckpointError, match="not a zerotune checkpoint"):
        build_app({"checkpoint": str(tmp_path / "nowhere")})
    partial = tmp_path / "partial"
    shutil.copytree(checkpoint, partial)
    shutil.rmtree(partial / "model")
    with pytest.raises(CheckpointError, match="no servable model"):
        build_app({"checkpoint": str(partial)})


def test_serve_config_is_a_valid_deploy_config_that_round_trips(checkpoint):
    from ray.serve.schema import ServeDeploySchema

    spec = ServeSection(port=8123, app_name="tweets", route_prefix="/tweets", max_batch_size=4)
    config = serve_config(checkpoint, spec)
    parsed = ServeDeploySchema.model_validate(config)
    [app] = parsed.applications
    assert (app.import_path, app.name, app.route_prefix) == (IMPORT_PATH, "tweets", "/tweets")
    assert parsed.http_options.port == 8123 and parsed.http_options.host == "127.0.0.1"
    args = BuildArgs.model_validate(app.args)
    assert args.serve == spec and args.checkpoint == str(checkpoint.resolve())


def test_serve_config_checks_the_checkpoint(tmp_path):
    with pytest.raises(CheckpointError):
        serve_config(tmp_path, ServeSection())


def test_base_url():
    assert base_url(ServeSection(port=9000)) == "http://127.0.0.1:9000"
    assert base_url(ServeSection(host="0.0.0.0", port=9000, route_prefix="/m")) == "http://127.0.0.1:9000/m"
    assert base_url(ServeSection(host="::1", port=9000)) == "http://[::1]:9000"
