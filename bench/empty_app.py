"""The baseline for bench/engine.py: the cheapest FastAPI POST endpoint, served by the same uvicorn.

    uvicorn empty_app:app --app-dir bench
"""
from fastapi import FastAPI

app = FastAPI()


@app.post("/empty")
async def empty() -> dict:
    return {}
