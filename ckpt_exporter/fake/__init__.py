"""A simulated fine-tuning API: a real HTTP server (aiohttp) on loopback.

Used by `ckpt-exporter demo`, by the tests and by the benchmark. It serves the same documents as
the real API (the tests validate them against OpenAI's published OpenAPI schemas), in either list
order, with pagination, an optional key check, simulated latency, a log of every request, and
faults on demand.

    api = FakeApi(api_key="sk-test")
    api.add_job("ftjob-1", newest_first=False)
    api.add_checkpoint("ftjob-1", step=10, metrics={"train_loss": 0.5})
    api.inject("ftjob-1", Fault.http(429, {"Retry-After": "2"}))
    with FakeApiServer(api) as server:
        print(server.base_url)        # http://127.0.0.1:PORT/v1

The modules, in the order a request meets them: server (the thread runner), routes (paths and
paging), auth (what each of OpenAI's and Azure's address forms accepts), state (FakeApi: jobs,
checkpoints, events, the request log), documents (the JSON shapes), faults and fault_answers
(what goes wrong, when, and how it is served), and training (the demo's simulated jobs).
"""

from ckpt_exporter.fake.auth import AddressForm, TokenCheck, address_form
from ckpt_exporter.fake.documents import FakeJob
from ckpt_exporter.fake.faults import FAULT_KINDS, Fault, ServedFault
from ckpt_exporter.fake.routes import RequestRecord
from ckpt_exporter.fake.server import FakeApiServer
from ckpt_exporter.fake.state import FakeApi
from ckpt_exporter.fake.training import SimulatedTraining

__all__ = [
    "FAULT_KINDS",
    "AddressForm",
    "FakeApi",
    "FakeApiServer",
    "FakeJob",
    "Fault",
    "RequestRecord",
    "ServedFault",
    "SimulatedTraining",
    "TokenCheck",
    "address_form",
]
