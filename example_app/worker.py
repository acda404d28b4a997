"""The example app on Celery, as Flask's documentation sets it up (``make demo-celery``).

Run a worker with ``EXAMPLE_APP_CELERY_BROKER=redis://127.0.0.1:6379/0
celery -A example_app.worker worker``; Celery is imported only in that mode.
"""

from __future__ import annotations

import os

from celery import Celery, Task
from flask import Flask


def celery_init_app(app: Flask) -> Celery:
    class FlaskTask(Task):  # type: ignore[type-arg]
        def __call__(self, *args: object, **kwargs: object) -> object:
            with app.app_context():
                return self.run(*args, **kwargs)

    celery_app = Celery(app.name, task_cls=FlaskTask)
    celery_app.config_from_object(app.config["CELERY"])
    celery_app.set_default()
    app.extensions["celery"] = celery_app
    from . import partnerstack

    partnerstack.init_celery(celery_app, beat=True)
    return celery_app


if os.environ.get("EXAMPLE_APP_CELERY_BROKER"):  # `celery -A example_app.worker worker`
    from . import create_app

    flask_app = create_app()
    celery = flask_app.extensions["celery"]
