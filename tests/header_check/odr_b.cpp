#include "aqua/aqua.hpp"

int odr_b_run() {
  double q[4] = {0, 1, 0, 0}, k[4] = {0, 1, 0, 0}, v[4] = {0, 0, 3, 0}, out[4];
  aqua::dense_decode<double>(aqua::make_view(q, 1, 4), aqua::make_view(k, 1, 1, 4),
                             aqua::make_view(v, 1, 1, 4), aqua::make_view(out, 1, 4));
  return out[2] == 3.0 ? 0 : 1;
}
