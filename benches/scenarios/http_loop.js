// CPU per request: looping users that do nothing but GET one URL (benches/http_cpu.py).
import http from 'punisher/http';

export const options = { vus: Number(__ENV.VUS || 50), duration: __ENV.DURATION || '10s' };

const URL = __ENV.URL;

export default async function () {
  await http.get(URL);
}
