"""The packaged training job: VGG16 transfer learning on an image folder, local or gs://."""
