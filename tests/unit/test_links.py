from mlsys.links import mlflow_model_link, mlflow_run_link


def test_run_link_opens_the_model_training_view() -> None:
    assert (
        mlflow_run_link("http://127.0.0.1:5000/", "3", "abc")
        == "http://127.0.0.1:5000/#/experiments/3/runs/abc?workflowType=machine_learning"
    )


def test_model_link_quotes_the_name_and_names_the_version() -> None:
    assert mlflow_model_link("http://h:1", "spam classifier") == (
        "http://h:1/#/models/spam%20classifier?workflowType=machine_learning"
    )
    assert mlflow_model_link("http://h:1", "m", 2) == (
        "http://h:1/#/models/m/versions/2?workflowType=machine_learning"
    )
