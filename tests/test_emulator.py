from google.auth.credentials import AnonymousCredentials
from google.cloud import storage


def test_emulator_round_trips_an_object(gcs_bucket: str) -> None:
    client = storage.Client(project="local", credentials=AnonymousCredentials())
    client.bucket(gcs_bucket).blob("a/b.txt").upload_from_string(b"seedling")
    assert client.bucket(gcs_bucket).blob("a/b.txt").download_as_bytes() == b"seedling"
    assert [blob.name for blob in client.list_blobs(gcs_bucket)] == ["a/b.txt"]
