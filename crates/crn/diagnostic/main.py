"""The diagnostic program of `/status/check/fastapi`: one route per feature a CRN
gives programs, each answering what it found so the node can check it.

Deploy it as a zip of this folder with entrypoint `main:app`, then give its PROGRAM
hash to the CRN (`diagnostic_program` in the config, or ALEPH_CRN_DIAGNOSTIC_PROGRAM).
"""

import os
import socket

from fastapi import FastAPI, Request

app = FastAPI()
state = {"started": False, "counter": 0}


@app.on_event("startup")
async def startup():
    state["started"] = True


@app.get("/")
async def index():
    return {"diagnostic": True}


@app.get("/environ")
async def environ():
    return dict(os.environ)


@app.get("/hostname")
async def hostname():
    return {"hostname": socket.gethostname()}


@app.get("/lifespan")
async def lifespan():
    return {"started": state["started"]}


@app.post("/echo")
async def echo(request: Request):
    body = await request.body()
    return {
        "method": request.method,
        "query": dict(request.query_params),
        "body": body.decode(errors="replace"),
    }


@app.get("/state/increment")
async def increment():
    state["counter"] += 1
    return {"counter": state["counter"]}


@app.get("/raise")
async def fail():
    raise RuntimeError("the diagnostic program raises on purpose")


@app.get("/internet")
async def internet():
    try:
        with socket.create_connection(("9.9.9.9", 53), timeout=3):
            return {"result": True}
    except OSError as error:
        return {"result": False, "reason": str(error)}
