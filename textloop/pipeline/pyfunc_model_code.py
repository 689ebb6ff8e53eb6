"""The code MLflow stores with every registered textloop model (MLflow's "models from code").

MLflow runs this file when it loads the model, instead of unpickling an object: it names the
wrapper (`TextClassifierPyfunc`, which reads the saved model folder, a JSON description and
arrays, from the model's artifacts). Never imported by textloop itself; `log_pyfunc` hands its
path to `mlflow.pyfunc.log_model`."""

import mlflow.models

from textloop.pipeline.pyfunc import TextClassifierPyfunc

mlflow.models.set_model(TextClassifierPyfunc())
