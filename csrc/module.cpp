// pybind11 bindings of the feature store: module `lxmert_fast._featstore`.
// convert() and Store.gather() release the GIL; arrays are zero-copy numpy views of the mapping
// that keep it alive. C++ errors become Python exceptions: FormatError -> TsvFormatError,
// StoreError -> StoreFormatError (both ValueError), IoError -> OSError with errno and filename
// (FileNotFoundError for ENOENT). Every entry point that reads the mapping first checks that the
// file was not truncated since it was opened (Store::check_size), so that it raises instead of
// SIGBUS.
#include <pybind11/functional.h>
#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include "codec.h"
#include "common.h"
#include "convert.h"
#include "store.h"

namespace py = pybind11;
using namespace featstore;

namespace {

struct Aborted {};  // the progress callback raised; the Python error is set

void set_python_error(const char* cls, const std::string& what) {
    py::object type = py::module_::import("lxmert_fast.features.errors").attr(cls);
    PyErr_SetString(type.ptr(), what.c_str());
}

py::dict convert(const std::vector<std::string>& paths, const std::string& out, uint32_t dtype,
                 int num_threads, py::object progress, bool durable) {
    ProgressFn fn;
    if (!progress.is_none()) {
        fn = [&progress](uint64_t bytes) {
            py::gil_scoped_acquire gil;
            try {
                progress(bytes);
                if (PyErr_CheckSignals() != 0) throw py::error_already_set();
            } catch (py::error_already_set& e) {
                e.restore();
                throw Aborted{};
            }
        };
    }
    ConvertStats st;
    try {
        py::gil_scoped_release release;
        st = convert_tsv(paths, out, dtype, num_threads, fn, durable);
    } catch (const Aborted&) {
        throw py::error_already_set();
    }
    py::dict d;
    d["num_images"] = st.num_images;
    d["num_boxes"] = st.num_boxes;
    d["feature_dim"] = st.feature_dim;
    d["bytes_read"] = st.bytes_read;
    d["file_size"] = st.file_size;
    return d;
}

template <typename T>
py::array view(const Store& s, Section sec, std::vector<py::ssize_t> shape) {
    auto* keep = new std::shared_ptr<Mapping>(s.mapping());
    py::capsule base(keep, [](void* p) { delete static_cast<std::shared_ptr<Mapping>*>(p); });
    return py::array(py::dtype::of<T>(), shape, reinterpret_cast<const T*>(s.section(sec)), base);
}

py::dict arrays(const Store& s) {
    s.check_size();
    const Header& h = s.header();
    auto n = py::ssize_t(h.num_images), t = py::ssize_t(h.num_boxes), d = py::ssize_t(h.feature_dim);
    py::dict a;
    if (h.dtype == kFloat16) {
        auto* keep = new std::shared_ptr<Mapping>(s.mapping());
        py::capsule base(keep, [](void* p) { delete static_cast<std::shared_ptr<Mapping>*>(p); });
        a["features"] = py::array(py::dtype("float16"), {t, d}, s.section(kFeatures), base);
    } else {
        a["features"] = view<float>(s, kFeatures, {t, d});
    }
    a["boxes"] = view<float>(s, kBoxes, {t, 4});
    a["objects_id"] = view<int64_t>(s, kObjectsId, {t});
    a["objects_conf"] = view<float>(s, kObjectsConf, {t});
    a["attrs_id"] = view<int64_t>(s, kAttrsId, {t});
    a["attrs_conf"] = view<float>(s, kAttrsConf, {t});
    a["box_start"] = view<uint64_t>(s, kBoxStart, {n + 1});
    a["img_h"] = view<int64_t>(s, kImgH, {n});
    a["img_w"] = view<int64_t>(s, kImgW, {n});
    return a;
}

template <typename T>
T* out_ptr(py::array& a, const char* name, const std::vector<py::ssize_t>& shape) {
    if (!a.dtype().is(py::dtype::of<T>()) || !(a.flags() & py::array::c_style) ||
        !a.writeable() || a.ndim() != py::ssize_t(shape.size()))
        throw std::invalid_argument(std::string("gather: buffer ") + name +
                                    " has the wrong dtype, rank or layout");
    for (size_t i = 0; i < shape.size(); ++i)
        if (a.shape(py::ssize_t(i)) != shape[i])
            throw std::invalid_argument(std::string("gather: buffer ") + name + " dim " +
                                        std::to_string(i) + " is " +
                                        std::to_string(a.shape(py::ssize_t(i))) + ", expected " +
                                        std::to_string(shape[i]));
    return static_cast<T*>(a.mutable_data());
}

void gather(const Store& s, py::array_t<int64_t, py::array::c_style | py::array::forcecast> idx,
            int64_t max_boxes, py::array features, py::array boxes, py::array box_mask,
            py::array objects_id, py::array objects_conf, py::array attrs_id,
            py::array attrs_conf, py::array num_boxes, py::array img_h, py::array img_w,
            int num_threads) {
    const Header& h = s.header();
    auto b = py::ssize_t(idx.size()), m = py::ssize_t(max_boxes);
    if (max_boxes < 0) throw std::invalid_argument("gather: max_boxes must be >= 0");
    const int64_t* ix = idx.data();
    for (py::ssize_t i = 0; i < b; ++i)
        if (ix[i] < 0 || uint64_t(ix[i]) >= h.num_images)
            throw py::index_error("gather: index " + std::to_string(ix[i]) + " at position " +
                                  std::to_string(i) + " is out of range for " +
                                  std::to_string(h.num_images) + " images");
    GatherOut out;
    if (h.dtype == kFloat16) out.features = out_ptr<uint16_t>(features, "features", {b, m, py::ssize_t(h.feature_dim)});
    else out.features = out_ptr<float>(features, "features", {b, m, py::ssize_t(h.feature_dim)});
    out.boxes = out_ptr<float>(boxes, "boxes", {b, m, 4});
    out.box_mask = out_ptr<bool>(box_mask, "box_mask", {b, m});
    out.objects_id = out_ptr<int64_t>(objects_id, "objects_id", {b, m});
    out.objects_conf = out_ptr<float>(objects_conf, "objects_conf", {b, m});
    out.attrs_id = out_ptr<int64_t>(attrs_id, "attrs_id", {b, m});
    out.attrs_conf = out_ptr<float>(attrs_conf, "attrs_conf", {b, m});
    out.num_boxes = out_ptr<int64_t>(num_boxes, "num_boxes", {b});
    out.img_h = out_ptr<int64_t>(img_h, "img_h", {b});
    out.img_w = out_ptr<int64_t>(img_w, "img_w", {b});
    py::gil_scoped_release release;
    s.gather(ix, size_t(b), max_boxes, out, num_threads);
}

py::array_t<int64_t> lookup_many(const Store& s, const std::vector<std::string>& ids) {
    py::array_t<int64_t> res(py::ssize_t(ids.size()));
    int64_t* r = res.mutable_data();
    s.check_size();
    for (size_t i = 0; i < ids.size(); ++i) r[i] = s.lookup(ids[i]);
    return res;
}

}  // namespace

PYBIND11_MODULE(_featstore, m) {
    m.doc() = "C++ LXMERT feature store: TSV conversion, memory-mapped store, batch gathering";
    py::register_exception_translator([](std::exception_ptr p) {
        try {
            if (p) std::rethrow_exception(p);
        } catch (const FormatError& e) {
            set_python_error("TsvFormatError", e.what());
        } catch (const StoreError& e) {
            set_python_error("StoreFormatError", e.what());
        } catch (const IoError& e) {
            py::object err = py::reinterpret_steal<py::object>(PyObject_CallFunction(
                PyExc_OSError, "isO", e.err, e.what(), py::str(e.path).ptr()));
            if (err) PyErr_SetObject(reinterpret_cast<PyObject*>(Py_TYPE(err.ptr())), err.ptr());
        }
    });
    m.attr("FORMAT_VERSION") = kVersion;
    m.attr("FLOAT16") = kFloat16;
    m.attr("FLOAT32") = kFloat32;
    m.def("convert", &convert, py::arg("paths"), py::arg("out_path"), py::arg("dtype"),
          py::arg("num_threads"), py::arg("progress") = py::none(), py::arg("durable") = true);
    m.def("remove_stale_temps", &remove_stale_temps, py::arg("out_path"),
          "unlink OUT.tmp.<pid>.<n> files of dead writers (convert does it first); the count");
    m.def("b64decode", [](py::bytes data) {
        std::string s = data;
        std::vector<uint8_t> out(s.size() / 4 * 3 + 3);
        size_t n = 0;
        std::string err;
        if (!b64_decode(s.data(), s.size(), out.data(), out.size(), &n, &err))
            throw std::invalid_argument(err);
        return py::bytes(reinterpret_cast<const char*>(out.data()), n);
    }, "base64.b64decode(data, validate=True) in C++ (test hook); ValueError on bad input");
    m.def("float_to_half", [](py::array_t<float, py::array::c_style | py::array::forcecast> a) {
        py::array_t<uint16_t> r(a.size());
        floats_to_halves(a.data(), r.mutable_data(), size_t(a.size()));
        return r;
    }, "float32 -> float16 bits as numpy's astype(float16) (test hook)");
    py::class_<Store>(m, "Store")
        .def(py::init<const std::string&>(), py::arg("path"))
        .def_property_readonly("path", &Store::path)
        .def_property_readonly("num_images", [](const Store& s) { return s.header().num_images; })
        .def_property_readonly("num_boxes", [](const Store& s) { return s.header().num_boxes; })
        .def_property_readonly("feature_dim", [](const Store& s) { return s.header().feature_dim; })
        .def_property_readonly("dtype", [](const Store& s) { return s.header().dtype; })
        .def_property_readonly("file_size", [](const Store& s) { return s.header().file_size; })
        .def("arrays", &arrays)
        .def("check_size", &Store::check_size,
             "StoreFormatError if the file is now shorter than the mapping (truncated)")
        .def("lookup", [](const Store& s, const std::string& id) {
            s.check_size();
            return s.lookup(id);
        })
        .def("lookup_many", &lookup_many)
        .def("id", [](const Store& s, uint64_t i) {
            if (i >= s.header().num_images) throw py::index_error("record " + std::to_string(i));
            s.check_size();
            std::string_view v = s.id(i);
            return py::str(v.data(), v.size());
        })
        .def("ids", [](const Store& s) {
            s.check_size();
            py::list out(s.header().num_images);
            for (uint64_t i = 0; i < s.header().num_images; ++i) {
                std::string_view v = s.id(i);
                out[i] = py::str(v.data(), v.size());
            }
            return out;
        })
        .def("gather", &gather, py::arg("indices"), py::arg("max_boxes"), py::arg("features"),
             py::arg("boxes"), py::arg("box_mask"), py::arg("objects_id"),
             py::arg("objects_conf"), py::arg("attrs_id"), py::arg("attrs_conf"),
             py::arg("num_boxes"), py::arg("img_h"), py::arg("img_w"), py::arg("num_threads"));
}
