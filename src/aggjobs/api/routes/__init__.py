"""The API's routes, one `APIRouter` per area; app.py includes them all."""
