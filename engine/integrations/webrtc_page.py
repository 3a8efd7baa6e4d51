"""The demo's own client page (served at `/`): plain browser WebRTC, no third-party code, so it works offline.

Pipecat's prebuilt page (`/client/`) manages devices with Daily's call-machine bundle, which it loads from
c.daily.co at run time; on a machine without internet access it cannot connect. This page speaks the same
protocol to the same endpoints as the prebuilt one (`POST /start`, then `POST /sessions/{id}/api/offer` with
the whole SDP once ICE gathering is complete): two sendrecv transceivers (audio, video) as Pipecat's
SmallWebRTC transport expects, the microphone only when the bot echoes it (`GET /demo/config`).
"""

PAGE = """<!DOCTYPE html>
<html lang="en">
<head>
<meta charset="utf-8">
<title>latentsync-engine demo</title>
<style>
  body { font-family: system-ui, sans-serif; margin: 2rem; background: #111; color: #eee; }
  video { background: #000; max-height: 80vh; max-width: 90vw; display: block; margin-top: 1rem; }
  button { font-size: 1.1rem; padding: 0.4rem 1.2rem; }
</style>
</head>
<body>
<h1>latentsync-engine: lip-sync over WebRTC</h1>
<p id="hint"></p>
<button id="connect">Connect</button> <span id="status">disconnected</span>
<video id="bot" autoplay playsinline></video>
<audio id="bot-audio" autoplay></audio>
<script>
const status = (text) => { document.getElementById('status').textContent = text; };
let pc = null;

async function connect() {
  const config = await (await fetch('/demo/config')).json();
  pc = new RTCPeerConnection({iceServers: []});
  let mic = null;
  if (config.echo) {
    try { mic = (await navigator.mediaDevices.getUserMedia({audio: true})).getAudioTracks()[0]; }
    catch (err) { status('no microphone: ' + err); }
  }
  if (mic) pc.addTransceiver(mic, {direction: 'sendrecv'});
  else pc.addTransceiver('audio', {direction: 'sendrecv'});
  pc.addTransceiver('video', {direction: 'sendrecv'});
  pc.createDataChannel('chat');
  pc.ontrack = (event) => {
    const element = document.getElementById(event.track.kind === 'video' ? 'bot' : 'bot-audio');
    element.srcObject = new MediaStream([event.track]);
  };
  pc.onconnectionstatechange = () => status(pc.connectionState);
  await pc.setLocalDescription(await pc.createOffer());
  await new Promise((resolve) => {
    if (pc.iceGatheringState === 'complete') return resolve();
    pc.addEventListener('icegatheringstatechange', () => pc.iceGatheringState === 'complete' && resolve());
  });
  const session = await (await fetch('/start', {method: 'POST', headers: {'Content-Type': 'application/json'},
                                                body: JSON.stringify({transport: 'webrtc'})})).json();
  const reply = await fetch(`/sessions/${session.sessionId}/api/offer`, {
    method: 'POST', headers: {'Content-Type': 'application/json'},
    body: JSON.stringify({sdp: pc.localDescription.sdp, type: pc.localDescription.type})});
  if (!reply.ok) throw new Error(`offer refused: ${reply.status} ${await reply.text()}`);
  await pc.setRemoteDescription(await reply.json());
}

document.getElementById('connect').onclick = async (event) => {
  const button = event.target;
  if (pc) { pc.close(); pc = null; button.textContent = 'Connect'; status('disconnected'); return; }
  button.textContent = 'Disconnect';
  status('connecting');
  try { await connect(); } catch (err) { status('error: ' + err); }
};
fetch('/demo/config').then((r) => r.json()).then((config) => {
  document.getElementById('hint').textContent = config.echo
    ? 'Press Connect, allow the microphone, say something and stop: the avatar says it back.'
    : 'Press Connect: the avatar reads the speech file aloud, again and again.';
});
</script>
</body>
</html>
"""
