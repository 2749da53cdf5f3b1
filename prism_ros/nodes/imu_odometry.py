"""imu_odometry: pure-IMU dead reckoning over ROS 2, the baseline the demo evaluates.

Initialised from the first two ground-truth poses (pose and finite-difference velocity), then
propagates the body state with every `/imu` message through :class:`prism_ros.dynamics.imu.ImuDeadReckoning`
and publishes the camera pose as `nav_msgs/Odometry` on `~/odometry`. With uncalibrated biases it
drifts within seconds: it shows what the visual filter has to correct, and it exercises IMU
transport and timing end to end.
"""
from __future__ import annotations

import sys

import numpy as np
import rclpy
from geometry_msgs.msg import PoseStamped
from nav_msgs.msg import Odometry
from rclpy.executors import ExternalShutdownException
from rclpy.node import Node
from sensor_msgs.msg import Imu

from prism_ros.dynamics.imu import ImuDeadReckoning
from prism_ros.nodes.compat import reliable_qos
from prism_ros.nodes.conversions import imu_to_arrays, matrix_to_odometry, pose_stamped_to_matrix, stamp_to_sec
from prism_ros.nodes.runner import interruptible


class ImuOdometryNode(Node):
    def __init__(self):
        super().__init__("imu_odometry")
        T_imu_camera = np.asarray(self.declare_parameter("T_imu_camera", np.eye(4).ravel().tolist()).value)
        if T_imu_camera.size != 16:
            raise ValueError(f"T_imu_camera needs 16 values (row-major 4x4), got {T_imu_camera.size}")
        self.T_imu_camera = T_imu_camera.reshape(4, 4)
        self.T_camera_imu = np.linalg.inv(self.T_imu_camera)
        self.frame_id = self.declare_parameter("world_frame", "world").value
        self.child_frame_id = self.declare_parameter("camera_frame", "camera_rgb_optical_frame").value
        self.propagator = ImuDeadReckoning(
            bias_gyro=self.declare_parameter("bias_gyro", [0.0, 0.0, 0.0]).value,
            bias_accel=self.declare_parameter("bias_accel", [0.0, 0.0, 0.0]).value)
        self.ground_truth: list[tuple[float, np.ndarray]] = []
        self.pending: list[tuple[float, np.ndarray, np.ndarray]] = []
        self.publisher = self.create_publisher(Odometry, "~/odometry", reliable_qos(1000))
        self.create_subscription(Imu, self.declare_parameter("imu_topic", "/imu").value, self.on_imu,
                                 reliable_qos(2000))
        self.gt_subscription = self.create_subscription(
            PoseStamped, self.declare_parameter("ground_truth_topic", "/ground_truth").value,
            self.on_ground_truth, reliable_qos(100))

    def on_ground_truth(self, msg: PoseStamped) -> None:
        """Collect two poses, then start the propagator at the second one."""
        if self.propagator.initialised:
            return
        T_world_imu = pose_stamped_to_matrix(msg) @ self.T_camera_imu
        self.ground_truth.append((stamp_to_sec(msg.header.stamp), T_world_imu))
        if len(self.ground_truth) < 2:
            return
        (t0, T0), (t1, T1) = self.ground_truth[-2:]
        velocity = (T1[:3, 3] - T0[:3, 3]) / (t1 - t0)
        held = [s for s in self.pending if s[0] <= t1] or self.pending[:1] or [(t1, np.zeros(3), [0, 0, 9.81])]
        _, gyro, accel = held[-1]
        self.propagator.reset(t1, T1[:3, :3], T1[:3, 3], velocity, gyro=gyro, accel=accel)
        self.get_logger().info(f"initialised at t={t1:.3f} from ground truth; propagating IMU")
        self.integrate_pending()

    def on_imu(self, msg: Imu) -> None:
        self.pending.append(imu_to_arrays(msg))
        if self.propagator.initialised:
            self.integrate_pending()

    def integrate_pending(self) -> None:
        """Propagate through the buffered samples and publish the camera pose at the last one."""
        t, gyro, accel = (np.array(x) for x in zip(*self.pending)) if self.pending else (None,) * 3
        self.pending.clear()
        if t is None:
            return
        t_end, R, p, v = self.propagator.update(t, gyro, accel)
        T_world_imu = np.eye(4)
        T_world_imu[:3, :3], T_world_imu[:3, 3] = R.cpu().numpy(), p.cpu().numpy()
        T_world_camera = T_world_imu @ self.T_imu_camera
        velocity_camera = T_world_camera[:3, :3].T @ v.cpu().numpy()
        rate_imu = (self.propagator.state[4] - self.propagator.bias_gyro).cpu().numpy()
        rate_camera = self.T_imu_camera[:3, :3].T @ rate_imu
        self.publisher.publish(matrix_to_odometry(
            T_world_camera, stamp=t_end, frame_id=self.frame_id, child_frame_id=self.child_frame_id,
            twist=np.concatenate([velocity_camera, rate_camera])))


def main(args: list[str] | None = None) -> int:
    interruptible()
    rclpy.init(args=args if args is not None else sys.argv)
    node = ImuOdometryNode()
    try:
        rclpy.spin(node)
    except (KeyboardInterrupt, ExternalShutdownException):  # Ctrl-C/SIGTERM, also when it lands mid-wait
        pass
    finally:
        node.destroy_node()
        if rclpy.ok():
            rclpy.shutdown()
    return 0


if __name__ == "__main__":
    sys.exit(main())
