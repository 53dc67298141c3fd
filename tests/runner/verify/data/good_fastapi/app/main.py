"""The application object."""

from fastapi import FastAPI

from app.api.users import router as users_router

app = FastAPI(title="Users service", version="0.1.0")
app.include_router(users_router)
