from tests.iam import client_with, stack


def test_emulator_round_trips_an_object(gcs_bucket: str) -> None:
    client = client_with(stack(gcs_bucket).owner_token)
    client.bucket(gcs_bucket).blob("a/b.txt").upload_from_string(b"seedling")
    assert client.bucket(gcs_bucket).blob("a/b.txt").download_as_bytes() == b"seedling"
    assert [blob.name for blob in client.list_blobs(gcs_bucket)] == ["a/b.txt"]
