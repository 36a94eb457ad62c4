// Accuracy: a constant arrival rate against `punisher target --latency 10ms`; the recorded
// p50/p99 are compared with the 10 ms truth (benches/accuracy.py).
import http from 'punisher/http';

export const options = {
  rate: Number(__ENV.RATE || 2000),
  duration: __ENV.DURATION || '20s',
  preAllocatedVUs: 200,
  maxVUs: 2000,
};

export default async function () {
  await http.get(`${__ENV.API}/api/info`, { name: 'info' });
}
