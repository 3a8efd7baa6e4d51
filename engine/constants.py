"""Named constants of the official LatentSync inference, with units."""

SAMPLE_RATE = 16_000  # Hz, mono
FPS = 25  # video frames per second
SAMPLES_PER_FRAME = SAMPLE_RATE // FPS  # 640 audio samples per video frame
N_FFT = 400  # whisper STFT window (samples)
HOP_LENGTH = 160  # whisper STFT hop (samples) -> 100 mel frames per second
N_MELS = 80
MEL_WINDOW_FRAMES = 3000  # 30 s whisper window, in mel frames
AUDIO_FEATURES_PER_SECOND = 50  # whisper encoder positions per second
AUDIO_TOKENS_PER_FRAME = 50  # 10 feature rows x 5 layers per video frame
VAE_SCALING_FACTOR = 0.18215
VAE_SHIFT_FACTOR = 0.0
LATENT_DOWNSAMPLE = 8
CHUNK_FRAMES = 16  # official num_frames per U-Net call
UNET_IN_CHANNELS = 13  # 4 noisy + 1 mask + 4 masked image + 4 reference
