"""Both stages of the labeling job build for Dataflow (DataflowRunner --dry_run=True: built, not submitted)."""

import apache_beam as beam
from apache_beam.options.pipeline_options import PipelineOptions
from apache_beam.pipeline import PipelineVisitor

from pipeline import label


def test_full_job_builds_with_dataflow_runner(photo_folder, tiny_teacher, tmp_path, monkeypatch):
    folder, _, _ = photo_folder
    # The dry run stages nothing, but Beam still resolves credentials; none exist here.
    monkeypatch.setenv("GOOGLE_CLOUD_PROJECT", "example-project")
    flags = ["--runner=DataflowRunner", "--dry_run=True", "--project=example-project", "--region=us-central1",
             "--temp_location=gs://example-bucket/tmp", "--no_auth", "--machine_type=n1-standard-8",
             "--experiments=use_runner_v2",
             "--dataflow_service_options=worker_accelerator=type:nvidia-tesla-t4;count:1;install-nvidia-driver"]
    predict_job, select_job = beam.Pipeline(options=PipelineOptions(flags)), beam.Pipeline(options=PipelineOptions(flags))
    label.run([f"--teacher={tiny_teacher}", f"--input={folder}/*", f"--output={tmp_path / 'labels'}",
               "--per_class=100", "--dedup", "--allow_random_teacher", *flags], test_pipeline=predict_job,
              select_test_pipeline=select_job)
    assert _stage_names(predict_job) >= {"Predict"}
    predict_names = _stage_names(predict_job, depth=2)
    for stage in ("ListInputs", "AssignShards", "GroupUnitsByShard", "PredictShards", "CommitIndex"):
        assert f"Predict/{stage}" in predict_names, sorted(predict_names)
    names = _stage_names(select_job)
    for stage in ("ReadIndex", "Deduplicate", "Select", "WriteRecords", "WriteRejected", "Facts", "Commit"):
        assert stage in names, sorted(names)
    assert not (tmp_path / "labels").exists(), "a dry run must not write anything"


def _stage_names(job, depth=1):
    names = set()

    class CollectLabels(PipelineVisitor):
        def enter_composite_transform(self, node):
            names.add("/".join(node.full_label.split("/")[:depth]))

        def visit_transform(self, node):
            names.add("/".join(node.full_label.split("/")[:depth]))

    job.visit(CollectLabels())
    return names
