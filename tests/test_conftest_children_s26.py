"""A process the suite spawns that imports conftest again (multiprocessing's spawn imports the
test module and its ``from conftest import ...``; a pytest-xdist worker) keeps the run's
temporary user folder and the XDG homes it inherited: it made a folder of its own, left behind in
the temporary folder after every run, and pointed its XDG homes away from its test module's."""
import multiprocessing
import os

import conftest


def _child(q):
    import conftest as again

    q.put((os.environ["XDG_CONFIG_HOME"], os.environ["XDG_DATA_HOME"], str(again._USER_HOME),
           getattr(again, "_OWN_USER_HOME", None)))


def test_a_spawned_child_keeps_the_runs_folder_and_its_modules_homes():
    ctx = multiprocessing.get_context("spawn")
    q = ctx.Queue()
    p = ctx.Process(target=_child, args=(q,))
    p.start()
    try:
        config, data, home, own = q.get(timeout=120)
    finally:
        p.join(60)
    # this module's own homes (conftest's module fixture), not a new folder's
    assert (config, data) == (os.environ["XDG_CONFIG_HOME"], os.environ["XDG_DATA_HOME"])
    assert home == str(conftest._USER_HOME) and own is False
    # the run's own process removes it at the end (under pytest-xdist: the controller, not a worker)
    assert conftest._OWN_USER_HOME is ("PYTEST_XDIST_WORKER" not in os.environ)
